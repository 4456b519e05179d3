"""The webhook takes its policies, Gatekeeper templates and constraints included, from a signed bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from admission.errors import ConfigError
from admission.server import build_controller
from admission.settings import AdmissionSettings
from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.opa_server import opa_server
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, review, running_webhook, write_site_parameters

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_policies_and_constraints_from_a_signed_bundle(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "policies", repo)
    write_site_parameters(repo / "parameters.yaml")  # the site's registries
    shutil.copy(
        REPO / "tests" / "data" / "gatekeeper" / "edgerequiredlabels" / "template.yaml",
        repo / "gatekeeper-template.yaml",
    )
    (repo / "gatekeeper").mkdir()
    shutil.move(repo / "gatekeeper-template.yaml", repo / "gatekeeper" / "template.yaml")
    constraint = {
        "apiVersion": "constraints.gatekeeper.sh/v1beta1",
        "kind": "K8sEdgeRequiredLabels",
        "metadata": {"name": "needs-team"},
        "spec": {
            "match": {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]},
            "parameters": {"labels": [{"key": "team"}]},
        },
    }
    (repo / "gatekeeper" / "constraint.yaml").write_text(yaml.safe_dump(constraint))
    signing = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "ci-1.pem"
    key_file.write_bytes(
        signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    files = sign_files(
        build_files(read_repository(repo), counter=1, commit="c", group="gateways"), SigningKey("ci-1", signing)
    )
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(pack(files))
    ca = TestCA(tmp_path / "ca")
    with (
        opa_server(tmp_path / "opa") as opa,
        running_webhook(
            tmp_path / "webhook", ca, bundle=bundle, bundle_keys=(f"ci-1={key_file}",), opa_port=opa.port
        ) as webhook,
    ):
        answer = webhook.review(review(pod("127.0.0.1:5000/app:v1", security={"privileged": True})))
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert "[no_privileged] container c0 is privileged" in message
    assert "[needs-team] Pod app must carry the label team" in message

    tampered = dict(files)
    tampered["edgetrust/admission/no_privileged/policy.yaml"] = b"name: no_privileged\nmode: audit\n"
    bundle.write_bytes(pack(tampered))
    with pytest.raises(ConfigError, match="does not match its signed hash"):
        build_controller(AdmissionSettings(bundle=bundle, bundle_keys=(f"ci-1={key_file}",)))
