"""The chart's wiring of the handoff (helm template, no cluster): with the syncer, the webhook follows its bundles
with least privilege (one ConfigMap, by name; a token in the webhook's container only) and one key list;
without the syncer, or with webhook.followBundles=false, none of it is rendered. The real node runs it:
tests/integration/chart_real/test_policy_follow.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localpeers.chartrelease import helm
from tests.integration.chart.support import CHART, NAMESPACE

pytestmark = pytest.mark.integration

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
HANDOFF = "edgetrust-admission-bundle"


def render(key: Path, *extra: str) -> dict[tuple[str, str], dict[str, Any]]:
    done = helm("template", "edgetrust", str(CHART), "--namespace", NAMESPACE, *extra)
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "ci-1.pub"
    path.write_text("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n")
    return path


def syncer_on(key: Path) -> list[str]:
    return [
        "-f", str(CHART / "examples" / "edge-site.yaml"), "--set-file", f"syncer.verificationKeys.ci-1={key}",
    ]  # fmt: skip


def containers(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    spec = objects[("Deployment", name)]["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def test_with_the_syncer_the_webhook_follows_with_one_configmap_and_one_key_list(key: Path) -> None:
    objects = render(key, *syncer_on(key))
    webhook = containers(objects, "edgetrust-webhook")
    args = webhook["webhook"]["args"]
    assert ["--follow-bundles", "--bundle-group=stores", f"--follow-namespace={NAMESPACE}"] == [
        a for a in args if a.startswith(("--follow", "--bundle-group"))
    ]
    assert "--bundle-key=ci-1=/etc/edgetrust/bundle-keys/ci-1.pem" in args
    assert "--default-library" in args  # no bundle in values: the library until the first bundle
    assert objects[("ConfigMap", "edgetrust-webhook-policy")]["data"] == {"key-ci-1": key.read_text()}
    pod = objects[("Deployment", "edgetrust-webhook")]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert TOKEN_DIR in {m["mountPath"] for m in webhook["webhook"]["volumeMounts"]}
    assert "volumeMounts" not in webhook["opa"]  # OPA gets no token
    role = objects[("Role", "edgetrust-webhook-handoff")]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["edgetrust-admission-bundle"],
            "verbs": ["get"],
        }
    ]
    binding = objects[("RoleBinding", "edgetrust-webhook-handoff")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "edgetrust-webhook", "namespace": NAMESPACE}]
    syncer = containers(objects, "edgetrust-syncer")["syncer"]
    assert f"--admission-handoff-namespace={NAMESPACE}" in syncer["args"]
    rules = objects[("Role", "edgetrust-syncer-handoff")]["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["edgetrust-admission-bundle"],
         "verbs": ["get", "patch"]},
    ]  # fmt: skip


@pytest.mark.parametrize("case", ["follow off", "no syncer"])
def test_without_following_nothing_of_the_handoff_is_rendered(key: Path, case: str) -> None:
    objects = render(key, *syncer_on(key), "--set", "webhook.followBundles=false") if case == "follow off" else (
        render(key)
    )  # fmt: skip
    assert not [k for k in objects if k[1].endswith("-handoff")]
    args = containers(objects, "edgetrust-webhook")["webhook"]["args"]
    assert not [a for a in args if a.startswith(("--follow", "--bundle-group", "--bundle-key"))]
    assert TOKEN_DIR not in {
        m["mountPath"] for m in containers(objects, "edgetrust-webhook")["webhook"]["volumeMounts"]
    }
    if case == "follow off":
        assert not [a for a in containers(objects, "edgetrust-syncer")["syncer"]["args"] if "handoff" in a]


def test_a_seed_bundle_is_verified_with_the_syncers_keys(key: Path, tmp_path: Path) -> None:
    seed = tmp_path / "seed.b64"
    seed.write_text("AAAA\n")
    objects = render(key, *syncer_on(key), "--set-file", f"webhook.policyBundleBase64={seed}")
    args = containers(objects, "edgetrust-webhook")["webhook"]["args"]
    assert "--bundle=/etc/edgetrust/bundle/bundle.tar.gz" in args
    assert "--follow-bundles" in args
    assert "--bundle-key=ci-1=/etc/edgetrust/bundle-keys/ci-1.pem" in args
    # the seed without any key at all is still refused before anything is made
    done = helm(
        "template", "edgetrust", str(CHART), "--namespace", NAMESPACE, "--set-file",
        f"webhook.policyBundleBase64={seed}", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "webhook.bundleKeys: a policy bundle is given" in done.stderr
