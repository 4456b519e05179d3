"""The chart's attestation-aware binding (webhook.nodeAttestation): auto by default (on with the whole plane only),
and when on, the binding
webhook, the webhook's read of one ConfigMap, the syncer's write of it, and the flags that join them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.integration.chart.support import CHART, NAMESPACE, UserInputs, helm, make_user_inputs
from tests.integration.chart.test_chart import EDGE_SITE, VERSIONS, rendered

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> UserInputs:
    return make_user_inputs(tmp_path_factory.mktemp("user"))


def _on(user: UserInputs) -> list[dict[str, Any]]:
    return rendered(
        EDGE_SITE,
        VERSIONS[-1],
        *user.set_files(),
        "--set-file",
        f"syncer.revocationKey={user.public_key}",
        "--set",
        "webhook.nodeAttestation.enabled=true",
    )


def _named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def test_off_by_default_the_webhook_has_no_api_access_and_no_binding_rule(user: UserInputs) -> None:
    docs = rendered(EDGE_SITE, VERSIONS[-1], *user.set_files())
    text = repr(docs)
    assert "pods/binding" not in text
    assert "node-attestation" not in text
    webhook = _named(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]
    assert webhook["automountServiceAccountToken"] is False


def test_on_the_scheduler_bindings_go_to_the_webhook_which_reads_one_configmap(user: UserInputs) -> None:
    docs = _on(user)
    for doc in docs:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
    validating = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")["webhooks"]
    bind = next(w for w in validating if w["name"] == "bind.edgetrust.io")
    assert bind["rules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods/binding"],
         "scope": "Namespaced"}
    ]  # fmt: skip
    assert bind["failurePolicy"] == "Fail"
    assert bind["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", NAMESPACE]
    webhook = _named(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]
    # the token goes to the webhook container alone (a projected volume), never to OPA's
    assert webhook["automountServiceAccountToken"] is False
    token = next(v for v in webhook["volumes"] if v["name"] == "kube-api-access")
    assert any("serviceAccountToken" in source for source in token["projected"]["sources"])
    assert not any(m["name"] == "kube-api-access" for m in webhook["containers"][1].get("volumeMounts", []))
    args = webhook["containers"][0]["args"]
    for flag in ("--node-attestation", "--cluster=store-0042", f"--follow-namespace={NAMESPACE}"):
        assert flag in args
    assert "--revocation-key=/etc/edgetrust/node-attestation/revocation-key.pem" in args
    read = _named(docs, "Role", "-webhook-node-attestation")["rules"]
    assert read == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["edgetrust-node-attestation"],
         "verbs": ["get"]}
    ]  # fmt: skip
    syncer = _named(docs, "Deployment", "-syncer")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--node-attestation-namespace={NAMESPACE}" in syncer
    write = _named(docs, "Role", "-syncer-node-attestation")["rules"]
    assert {"verbs": ["get", "patch"], "resourceNames": ["edgetrust-node-attestation"]}.items() <= write[1].items()
    policy = _named(docs, "ConfigMap", "-webhook-policy")["data"]
    assert policy["revocation-key.pem"] == user.public_key.read_text()


def test_on_without_the_syncers_revocation_key_is_refused_by_name(user: UserInputs, tmp_path: Path) -> None:
    done = helm(
        "template", "t", str(CHART), "-f", str(EDGE_SITE), *user.set_files(),
        "--set", "webhook.nodeAttestation.enabled=true", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "webhook.nodeAttestation.enabled needs the syncer (syncer.enabled) with the hub's revocation key" in (
        done.stderr
    )


def _binding_rule(docs: list[dict[str, Any]]) -> bool:
    validating = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")["webhooks"]
    return any(w["name"] == "bind.edgetrust.io" for w in validating)


@pytest.mark.parametrize(
    ("setting", "node_agent", "revocation_key", "on"),
    [
        ("auto", True, True, True),  # the whole plane: on by itself
        ("auto", False, True, False),  # no node agent: nodes are not enrolled under their names
        ("auto", True, False, False),  # no key to verify the document with
        ("false", True, True, False),
        ("true", False, True, True),
    ],
)
def test_auto_turns_the_gate_on_with_the_whole_plane_only(
    user: UserInputs, setting: str, node_agent: bool, revocation_key: bool, on: bool
) -> None:
    argv = [*user.set_files(), "--set", f"webhook.nodeAttestation.enabled={setting}"]
    argv += ["--set", f"nodeAgent.enabled={str(node_agent).lower()}"]
    if not node_agent:  # the syncer's identity then comes from the fallback Secret
        argv += ["--set", "syncer.svidFallbackSecret=edgetrust-cluster-svid"]
    if revocation_key:
        argv += ["--set-file", f"syncer.revocationKey={user.public_key}"]
    docs = rendered(EDGE_SITE, VERSIONS[-1], *argv)
    assert _binding_rule(docs) is on
    args = _named(docs, "Deployment", "-webhook")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("--node-attestation" in args) is on
