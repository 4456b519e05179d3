"""Policy sets that differ only in which generation they admit, so a verdict names the set that decided it.

Set k admits a pod whose label `gen` is "k" and denies any other. The value k lives in a shared Rego library
(`data.edgetrust.lib.gen.expected`) and the label's name in the policy's parameters (`data.edgetrust.config`),
so a review decided by a policy of one set and a library or parameters of another would come out wrong, not
merely slow: that is what a non-atomic swap would look like.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from admission.policy import PolicySet
from admission.review import AdmissionRequest, parse_review
from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files

POLICY_REGO = """package edgetrust.admission.generation

import rego.v1

import data.edgetrust.lib.gen

violation contains {"msg": msg} if {
	input.review.object.metadata.labels[input.parameters.label] != gen.expected
	msg := sprintf("generation %s only", [gen.expected])
}
"""

#: compiles nowhere: OPA refuses the module (an undefined function), PolicySet.load does not look at Rego
BROKEN_REGO = """package edgetrust.admission.generation

import rego.v1

violation contains {"msg": "never"} if {
	no_such_function(input.review)
}
"""


#: a Gatekeeper template (Rego v0, with a lib) whose constraint carries the generation in its parameters
TEMPLATE = {
    "apiVersion": "templates.gatekeeper.sh/v1",
    "kind": "ConstraintTemplate",
    "metadata": {"name": "k8sgeneration"},
    "spec": {
        "crd": {"spec": {"names": {"kind": "K8sGeneration"}}},
        "targets": [
            {
                "target": "admission.k8s.gatekeeper.sh",
                "rego": "package k8sgeneration\n\nimport data.lib.genlabel.label_of\n\n"
                'violation[{"msg": msg}] {\n  label_of(input.review.object) != input.parameters.expected\n'
                '  msg := sprintf("constraint: generation %v only", [input.parameters.expected])\n}\n',
                "libs": ["package lib.genlabel\n\nlabel_of(obj) = v {\n  v := obj.metadata.labels.gen2\n}\n"],
            }
        ],
    },
}


def generation_dir(root: Path, k: int, *, broken: bool = False) -> Path:
    """The policy folder of generation k (a broken one holds Rego OPA refuses)."""
    folder = root / (f"gen{k}-broken" if broken else f"gen{k}")
    (folder / "lib").mkdir(parents=True, exist_ok=True)
    (folder / "lib" / "policy.yaml").write_text(yaml.safe_dump({"name": "lib", "type": "library"}))
    (folder / "lib" / "gen.rego").write_text(f'package edgetrust.lib.gen\n\nexpected := "{k}"\n')
    policy = folder / "generation"
    policy.mkdir(exist_ok=True)
    meta = {"name": "generation", "mode": "enforce", "failure": "closed", "parameters": {"label": "gen"}}
    (policy / "policy.yaml").write_text(yaml.safe_dump(meta))
    (policy / "generation.rego").write_text(BROKEN_REGO if broken else POLICY_REGO)
    return folder


def gatekeeper_dir(root: Path, k: int) -> Path:
    """Generation k's Gatekeeper files: the template, and a constraint expecting label gen2 == "k"."""
    folder = root / f"gk{k}"
    folder.mkdir(parents=True, exist_ok=True)
    constraint = {
        "apiVersion": "constraints.gatekeeper.sh/v1beta1",
        "kind": "K8sGeneration",
        "metadata": {"name": "generation-constraint"},
        "spec": {"match": {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]}, "parameters": {"expected": str(k)}},
    }
    (folder / "template.yaml").write_text(yaml.safe_dump(TEMPLATE))
    (folder / "constraint.yaml").write_text(yaml.safe_dump(constraint))
    return folder


def generation_set(root: Path, k: int, *, broken: bool = False, gatekeeper: bool = False) -> PolicySet:
    """Generation k; with `gatekeeper`, its Gatekeeper template and constraint too (both must agree)."""
    return PolicySet.load(
        generation_dir(root, k, broken=broken),
        exempt_namespaces=(),
        gatekeeper_dir=gatekeeper_dir(root, k) if gatekeeper else None,
    )


def pod_review(uid: str, generation: int, *, namespace: str = "apps") -> AdmissionRequest:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"p-{uid}",
            "namespace": namespace,
            "labels": {"gen": str(generation), "gen2": str(generation)},
        },
        "spec": {"containers": [{"name": "c", "image": "registry.edge.test/app@sha256:" + "a" * 64}]},
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "name": f"p-{uid}",
            "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": pod,
        },
    }
    return parse_review(orjson.dumps(review))


def generation_bundle(
    root: Path,
    k: int,
    key: ec.EllipticCurvePrivateKey,
    *,
    key_id: str = "ci-1",
    group: str = "gateways",
    broken: bool = False,
) -> bytes:
    """Generation k as a signed bundle for `group` with revision counter k, as the hub publishes it; `broken`:
    validly signed Rego that OPA refuses."""
    repository = root / (f"repo{k}-broken" if broken else f"repo{k}")
    if repository.exists():
        shutil.rmtree(repository)
    shutil.copytree(generation_dir(root, k, broken=broken), repository / "admission")
    files = build_files(read_repository(repository), counter=k, commit=f"{k:040x}", group=group)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pack(sign_files(files, SigningKey.from_pem(key_id, pem)))
