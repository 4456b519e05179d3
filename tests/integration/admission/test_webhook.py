"""The webhook over TLS against real OPA, a real registry and signatures written by the real cosign/oras."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from localpeers.peers import peer
from localpeers.registry import Registry
from localpeers.webhook import RunningWebhook, pod, review, workload
from tests.integration.admission.conftest import Images

pytestmark = pytest.mark.integration

POD_BEARING = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]


def test_signed_image_is_admitted(webhook: RunningWebhook, images: Images) -> None:
    request = review(pod(images.signed, name="signed"))
    answer = webhook.review(request)
    assert answer["uid"] == request["request"]["uid"]
    assert answer["allowed"] is True, answer
    assert "warnings" not in answer


def test_unsigned_image_is_rejected_naming_policy_and_object(webhook: RunningWebhook, images: Images) -> None:
    answer = webhook.review(review(pod(images.unsigned, name="intruder"), namespace="shop"))
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert "Pod shop/intruder" in message
    assert "[signed_images]" in message
    assert "no cosign signature" in message
    assert answer["status"]["code"] == 403


@pytest.mark.parametrize("kind", POD_BEARING)
def test_every_pod_bearing_kind_is_checked(webhook: RunningWebhook, images: Images, kind: str) -> None:
    assert webhook.review(review(workload(kind, pod(images.signed))))["allowed"] is True
    answer = webhook.review(review(workload(kind, pod([images.signed, images.unsigned]))))
    assert answer["allowed"] is False
    assert f"{kind} default/app" in answer["status"]["message"]
    assert "edgetrust/unsigned" in answer["status"]["message"]


def test_signature_by_an_untrusted_key_is_rejected(webhook: RunningWebhook, images: Images) -> None:
    answer = webhook.review(review(pod(images.wrong_key)))
    assert answer["allowed"] is False
    assert "does not verify under any of the policy's keys" in answer["status"]["message"]


def test_our_verdicts_agree_with_cosign_verify(
    registry: Registry, images: Images, cosign_keys: tuple[Path, Path], webhook: RunningWebhook
) -> None:
    """The real cosign accepts what we accept and refuses what we refuse, for the same key."""
    _, public = cosign_keys
    assert registry.cosign_verify(images.signed, public).returncode == 0
    assert registry.cosign_verify(images.wrong_key, public).returncode != 0
    assert webhook.review(review(pod(images.signed)))["allowed"] is True
    assert webhook.review(review(pod(images.wrong_key)))["allowed"] is False


def test_signature_copied_from_another_image_is_rejected(
    webhook: RunningWebhook, registry: Registry, cosign_keys: tuple[Path, Path], images: Images
) -> None:
    """A valid signature (right key) whose payload names another digest: the .sig manifest was copied over."""
    digest = registry.push_image("edgetrust/copied", "v1", content=b"copied signature target")
    source = f"{registry.host}/edgetrust/signed:{images.signed_digest.replace(':', '-')}.sig"
    target = f"{registry.host}/edgetrust/copied:{digest.replace(':', '-')}.sig"
    registry.run(
        peer("oras"),
        "copy",
        "--from-ca-file",
        str(registry.ca_file),
        "--to-ca-file",
        str(registry.ca_file),
        source,
        target,
        cwd=registry.workdir,
    )
    answer = webhook.review(review(pod(f"{registry.host}/edgetrust/copied:v1")))
    assert answer["allowed"] is False
    assert f"signed payload names {images.signed_digest}, but the image is {digest}" in answer["status"]["message"]


def test_sig_manifest_pointing_to_a_missing_blob_is_rejected(
    webhook: RunningWebhook, registry: Registry, cosign_keys: tuple[Path, Path]
) -> None:
    key, _ = cosign_keys
    digest = registry.push_image("edgetrust/blobless", "v1", content=b"signature blob deleted")
    registry.cosign_sign(f"{registry.host}/edgetrust/blobless@{digest}", key)
    manifest = registry.http_get_json(f"edgetrust/blobless/manifests/{digest.replace(':', '-')}.sig")
    payload_digest = manifest["layers"][0]["digest"]
    registry.delete_blob("edgetrust/blobless", payload_digest)
    answer = webhook.review(review(pod(f"{registry.host}/edgetrust/blobless:v1")))
    assert answer["allowed"] is False
    assert f"blob {payload_digest} is missing from the registry" in answer["status"]["message"]


def test_keyless_sigstore_bundle_is_admitted(webhook: RunningWebhook, images: Images) -> None:
    answer = webhook.review(review(pod(images.keyless)))
    assert answer["allowed"] is True, answer


def test_keyless_bundle_from_another_identity_is_rejected(webhook: RunningWebhook, images: Images) -> None:
    answer = webhook.review(review(pod(images.keyless_other_identity)))
    assert answer["allowed"] is False
    assert "Sigstore bundle rejected" in answer["status"]["message"]


def test_image_missing_from_the_registry_is_rejected(webhook: RunningWebhook, registry: Registry) -> None:
    answer = webhook.review(review(pod(f"{registry.host}/edgetrust/ghost:v9")))
    assert answer["allowed"] is False
    assert "no manifest 'v9'" in answer["status"]["message"]


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("{host}/EdgeTrust/Signed:v1", "must be lowercase"),
        ("{host}/edgetrust/signed@sha256:1234", "is not sha256:<64 hex>"),
        ("", "image reference is empty"),
        ("{host}/edgetrust/signed:v1 ", "is not a valid tag"),
    ],
)
def test_odd_image_references_are_refused_clearly(
    webhook: RunningWebhook, registry: Registry, image: str, reason: str
) -> None:
    answer = webhook.review(review(pod(image.format(host=registry.host))))
    assert answer["allowed"] is False
    assert reason in answer["status"]["message"]


def test_digest_and_tag_reference_is_verified_by_its_digest(webhook: RunningWebhook, images: Images) -> None:
    both = f"{images.signed}@{images.signed_digest}"
    assert webhook.review(review(pod(both)))["allowed"] is True
    unsigned_digest = "sha256:" + "0" * 64
    answer = webhook.review(review(pod(f"{images.signed}@{unsigned_digest}")))
    assert answer["allowed"] is False


def test_mutating_endpoint_pins_tags_to_the_verified_digest(webhook: RunningWebhook, images: Images) -> None:
    answer = webhook.review(review(workload("Deployment", pod(images.signed))), path="/mutate")
    assert answer["allowed"] is True
    assert answer["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(answer["patch"]))
    repository = images.signed.rsplit(":", 1)[0]
    assert patch == [
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/image",
            "value": f"{repository}@{images.signed_digest}",
        }
    ]


def test_rego_enforce_warn_audit_and_dryrun(webhook: RunningWebhook, images: Images) -> None:
    privileged = webhook.review(review(pod(images.signed, security={"privileged": True})))
    assert privileged["allowed"] is False
    assert "[no_privileged] container c0 is privileged" in privileged["status"]["message"]

    unlabeled = webhook.review(review(pod(images.signed, labels={})))
    assert unlabeled["allowed"] is True
    assert any("[require_labels]" in w and "app.kubernetes.io/name" in w for w in unlabeled["warnings"])

    unlimited = pod(images.signed)
    del unlimited["spec"]["containers"][0]["resources"]
    answer = webhook.review(review(unlimited))
    assert answer["allowed"] is True
    assert "warnings" not in answer
    with webhook.client() as client:
        metrics = client.get("/metrics").text
    assert re.search(r'edgetrust_admission_decisions_total\{policy="require_limits",result="audited"\} [1-9]', metrics)

    debug = pod(images.signed)
    debug["metadata"]["annotations"] = {"edgetrust.io/debug": "true"}
    answer = webhook.review(review(debug))
    assert answer["allowed"] is True
    assert answer["auditAnnotations"] == {"edgetrust.io/dryrun-no_debug_pods": "debug pods are not for production"}


def test_kube_system_is_exempt(webhook: RunningWebhook, images: Images) -> None:
    answer = webhook.review(review(pod(images.unsigned, security={"privileged": True}), namespace="kube-system"))
    assert answer["allowed"] is True


def test_metrics_count_decisions_cache_and_latency(webhook: RunningWebhook, images: Images) -> None:
    for _ in range(3):
        webhook.review(review(pod(images.signed)))
    with webhook.client() as client:
        metrics = client.get("/metrics").text
    assert re.search(r"edgetrust_admission_signature_cache_hits_total [1-9]", metrics)
    assert re.search(r'edgetrust_admission_decisions_total\{policy="signed_images",result="allowed"\} [1-9]', metrics)
    assert 'edgetrust_admission_latency_seconds_bucket{endpoint="validate",le="0.01"}' in metrics
