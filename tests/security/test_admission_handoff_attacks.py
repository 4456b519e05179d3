"""Attacks on the handoff ConfigMap (the syncer -> webhook path), against a real kube-apiserver, OPA and the
webhook's follower. Whoever can write the ConfigMap must not be able to change what the webhook enforces:
each attack is refused, the set in force stays, the refusal is counted and shown, and the next good bundle
still goes in."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from admission.controller import AdmissionController
from admission.follow import BundleFollower, HandoffError
from edgetrust.bundles import handoff
from edgetrust.bundles.format import pack, unpack
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.kube import KubeAPI
from tests.support.handoff_rig import NAMESPACE, HandoffRig, handoff_kube, handoff_rig
from tests.support.policy_generations import BROKEN_REGO, POLICY_REGO, pod_review


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    with handoff_kube(tmp_path_factory.mktemp("handoff-attacks")) as api:
        yield api


@pytest.fixture
def rig(tmp_path: Path, kube: KubeAPI) -> Iterator[HandoffRig]:
    with handoff_rig(kube, tmp_path) as rig:
        yield rig


def tampered(blob: bytes) -> bytes:
    """The bundle with its policy loosened (admits every generation), signatures left as they were."""
    files = dict(unpack(blob).files)
    name = "edgetrust/admission/generation/generation.rego"
    assert files[name].decode() == POLICY_REGO
    files[name] = POLICY_REGO.replace("!= gen.expected", '== "no such generation"').encode()
    return pack(files)


def refused_and_unchanged(rig: HandoffRig, attack: bytes | dict[str, object], match: str) -> None:
    """Generation 5 in force; `attack` put in the ConfigMap is refused, 5 stays, and 6 still goes in after."""

    async def scenario(controller: AdmissionController, follower: BundleFollower) -> None:
        rig.put(rig.bundle(5))
        assert await follower.check_once() == "swapped"
        if isinstance(attack, bytes):
            rig.put(attack)
        else:
            rig.put_object(attack)
        with pytest.raises(HandoffError, match=match):
            await follower.check_once()
        assert controller.status.counter == 5
        assert (await controller.decide(pod_review("ok", 5))).allowed
        assert not (await controller.decide(pod_review("other", 7))).allowed
        assert controller.status.last_failure  # /readyz names the refusal
        assert 'edgetrust_admission_policy_swaps_total{result="failed"} 1.0' in controller.metrics.exposition().decode()
        # the attack is not retried on every read, and does not block the next good bundle
        assert await follower.check_once() == "unchanged"
        rig.put(rig.bundle(6))
        assert await follower.check_once() == "swapped"
        assert controller.status.counter == 6

    rig.run(scenario)


def test_a_tampered_bundle_in_the_configmap_is_refused(rig: HandoffRig) -> None:
    refused_and_unchanged(rig, tampered(rig.bundle(9)), "signature|digest|does not match")


def test_an_older_validly_signed_bundle_is_refused(rig: HandoffRig) -> None:
    refused_and_unchanged(rig, rig.bundle(4), "not above 5")


def test_the_bundle_in_force_replayed_with_a_lower_counter_is_refused(rig: HandoffRig) -> None:
    refused_and_unchanged(rig, rig.bundle(1), "not above 5")


def test_another_groups_bundle_by_the_same_signer_is_refused(rig: HandoffRig) -> None:
    refused_and_unchanged(rig, rig.bundle(9, group="stores"), "group 'stores'")


def test_a_bundle_signed_by_a_key_the_webhook_does_not_trust_is_refused(rig: HandoffRig) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    refused_and_unchanged(rig, rig.bundle(9, key=stranger), "signature|key")


def test_a_configmap_that_is_not_base64_is_refused(rig: HandoffRig) -> None:
    obj = handoff.configmap(rig.bundle(9), namespace=NAMESPACE, revision="x", labels={})
    obj["binaryData"] = {}
    obj["data"] = {handoff.KEY: "not a bundle"}  # the bundle moved to data: not read there
    refused_and_unchanged(rig, obj, "no binaryData")


def test_a_bundle_opa_refuses_is_refused_and_the_set_in_force_stays(rig: HandoffRig) -> None:
    files = dict(unpack(rig.bundle(9)).files)
    files["edgetrust/admission/generation/generation.rego"] = BROKEN_REGO.encode()
    # re-signed by the trusted key: a signer's mistake, not an attack; OPA refuses it, the old set stays
    del files[".signatures.json"]
    pem = rig.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    refused_and_unchanged(rig, pack(sign_files(files, SigningKey.from_pem("ci-1", pem))), "OPA refused")


def test_a_bundle_too_large_for_a_configmap_is_refused_not_cut() -> None:
    with pytest.raises(handoff.HandoffTooLargeError, match="over the"):
        handoff.configmap(b"x" * (handoff.MAX_HANDOFF_BYTES + 1), namespace=NAMESPACE, revision="big", labels={})
    oversized = {"binaryData": {handoff.KEY: base64.b64encode(b"x" * (handoff.MAX_HANDOFF_BYTES + 4)).decode()}}
    with pytest.raises(handoff.HandoffTooLargeError):
        handoff.bundle_bytes(oversized)
