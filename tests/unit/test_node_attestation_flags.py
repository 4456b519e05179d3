"""The node attestation switches of the syncer and the webhook: each names what it needs, before anything starts
(a webhook that could not verify the document would refuse every binding; a syncer that could not verify it
would relay nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from admission.errors import ConfigError
from admission.server import build_node_gate
from admission.settings import AdmissionSettings
from edgetrust._internal.cli import EXIT_USAGE
from syncer.cli import main as syncer
from tests.support.binding_rig import public_pem
from tests.unit.syncer.test_cli_identity import base


def test_the_syncer_relays_only_with_the_hubs_revocation_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*base(tmp_path), "--svid", str(tmp_path / "svid.pem"), "--svid-key", str(tmp_path / "svid.key")]
    assert syncer([*argv, "--node-attestation-namespace", "edgetrust-system"]) == EXIT_USAGE
    assert "--node-attestation-namespace needs --revocation-key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "--node-attestation needs --revocation-key"),
        ({"node_attestation_key": "missing.pem"}, "--revocation-key"),
        ({"node_attestation_key": "not-a-key.pem"}, "is not a PEM public key"),
        ({"node_attestation_key": "hub.pem"}, "needs this cluster's name"),
    ],
)
def test_the_webhook_gate_needs_the_key_and_the_cluster(tmp_path: Path, settings: dict[str, str], message: str) -> None:
    (tmp_path / "not-a-key.pem").write_text("hello")

    (tmp_path / "hub.pem").write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    given: dict[str, Any] = {k: tmp_path / v for k, v in settings.items()}
    with pytest.raises(ConfigError, match=message):
        build_node_gate(AdmissionSettings(node_attestation=True, kube_url="https://127.0.0.1:1", **given))


def test_without_the_switch_there_is_no_gate() -> None:
    assert build_node_gate(AdmissionSettings()) is None
