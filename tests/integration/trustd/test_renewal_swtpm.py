"""Node SVID renewal on a real swtpm against a real trustd: mTLS with the current SVID plus a fresh quote by the
enrolled AK. Refused, with the reason: a node whose boot measurements changed since, a revoked node, a replayed
renewal, a quote by another AK. `trustctl agent run --tpm` renews on its own at half the lifetime."""

from __future__ import annotations

import base64
import ssl
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from attestation.device import TPMDevice
from attestation.tpm2.constants import HashAlg
from edgetrust.protocol import b64
from localpeers.hub import RunningHub, running_hub
from localpeers.nodes import enroll_node
from localpeers.processes import running
from tests.integration.conftest import BootedDevice
from tests.support.protocol import make_csr
from trustd.agent.renewal_client import renew_node
from trustd.errors import EnrollmentError

pytestmark = pytest.mark.integration


def enrolled(hub: RunningHub, device: BootedDevice, out: Path) -> str:
    return enroll_node(hub.url, hub.ca_bundle, tcti=device.tcti, event_log=device.event_log, out_dir=out).spiffe_id


def serial(svid_dir: Path) -> int:
    return x509.load_pem_x509_certificates((svid_dir / "svid.pem").read_bytes())[0].serial_number


def test_a_node_renews_with_a_fresh_quote(hub: RunningHub, golden_device: BootedDevice, tmp_path: Path) -> None:
    spiffe_id = enrolled(hub, golden_device, tmp_path / "svid")
    before = serial(tmp_path / "svid")
    device = hub.hub.store.device_by_spiffe_id(spiffe_id)
    assert device is not None
    assert device.attested_at == device.enrolled_at  # the enrollment's quote: its first attestation
    renewed = renew_node(
        hub=hub.url, svid_dir=tmp_path / "svid", tcti=golden_device.tcti, event_log=golden_device.event_log
    )
    assert renewed.spiffe_id == spiffe_id
    assert renewed.serial == serial(tmp_path / "svid") != before
    assert [int(s.serial, 16) for s in hub.hub.store.svids(spiffe_id)] == [before, renewed.serial]
    # the verified quote moved the node's last attestation (what its clusters' webhooks judge bindings by)
    later = hub.hub.store.device_by_spiffe_id(spiffe_id)
    assert later is not None
    assert later.attested_at > device.attested_at
    # and again with the renewed SVID: the new key and certificate are what the node now holds
    again = renew_node(
        hub=hub.url, svid_dir=tmp_path / "svid", tcti=golden_device.tcti, event_log=golden_device.event_log
    )
    assert again.serial not in (before, renewed.serial)


def test_a_node_that_booted_something_else_is_refused(
    hub: RunningHub, golden_device: BootedDevice, tmp_path: Path
) -> None:
    spiffe_id = enrolled(hub, golden_device, tmp_path / "svid")
    with TPMDevice(golden_device.tcti) as tpm:
        tpm.extend_pcr(4, b"a bootloader nobody approved")  # what a different boot would have measured
    attested = hub.hub.store.device_by_spiffe_id(spiffe_id)
    with pytest.raises(EnrollmentError, match="PCR"):
        renew_node(hub=hub.url, svid_dir=tmp_path / "svid", tcti=golden_device.tcti, event_log=golden_device.event_log)
    refusal = next(e for e in hub.hub.store.audit_events() if e.event == "agent.renew")
    assert refusal.outcome == "refused"
    assert hub.hub.store.device_by_spiffe_id(spiffe_id) == attested  # a refused quote attests nothing


def test_a_revoked_node_may_not_renew(hub: RunningHub, golden_device: BootedDevice, tmp_path: Path) -> None:
    spiffe_id = enrolled(hub, golden_device, tmp_path / "svid")
    hub.hub.revocations.revoke(spiffe_id, reason="stolen", by="spiffe://edge.example/operator/admin")
    with pytest.raises(EnrollmentError, match="is revoked"):
        renew_node(hub=hub.url, svid_dir=tmp_path / "svid", tcti=golden_device.tcti, event_log=golden_device.event_log)


def test_a_replayed_or_stale_renewal_is_refused(hub: RunningHub, golden_device: BootedDevice, tmp_path: Path) -> None:
    enrolled(hub, golden_device, tmp_path / "svid")
    svid_dir = tmp_path / "svid"
    context = ssl.create_default_context(cafile=str(svid_dir / "bundle.pem"))
    context.load_cert_chain(str(svid_dir / "svid.pem"), str(svid_dir / "svid.key"))
    with TPMDevice(golden_device.tcti) as tpm:
        other_ak = tpm.create_attestation_key("ecc").public  # another AK, even in the same TPM
    with httpx.Client(base_url=hub.url, verify=context) as http, TPMDevice(golden_device.tcti) as tpm:
        ak = tpm.load_attestation_key((svid_dir / "ak.priv").read_bytes(), (svid_dir / "ak.pub").read_bytes())

        def body(challenge: dict[str, object], nonce: bytes) -> dict[str, object]:
            selection = {HashAlg.from_label(b): p for b, p in challenge["pcr_selection"].items()}  # type: ignore[attr-defined]
            quote = tpm.quote(selection, nonce)
            return {
                "challenge_id": challenge["challenge_id"],
                "ak_public": b64(ak.public),
                "attest": b64(quote.attest),
                "signature": b64(quote.signature),
                "pcr_values": {b.label: {i: v.hex() for i, v in vals.items()} for b, vals in quote.pcr_values.items()},
                "event_log": b64(golden_device.event_log),
                "csr": make_csr(),
            }

        first = http.post("/v1/agent/renew/challenge").json()
        good = body(first, base64.b64decode(first["nonce"]))
        assert http.post("/v1/agent/renew", json=good).status_code == 200
        replay = http.post("/v1/agent/renew", json=good)
        assert replay.status_code == 403
        assert "already answered once" in replay.json()["reason"]

        second = http.post("/v1/agent/renew/challenge").json()
        stale = body(second, base64.b64decode(first["nonce"]))  # a quote over an old nonce
        refused = http.post("/v1/agent/renew", json=stale)
        assert refused.status_code == 403
        assert "nonce" in refused.json()["reason"]

        third = http.post("/v1/agent/renew/challenge").json()
        foreign = body(third, base64.b64decode(third["nonce"]))
        foreign["ak_public"] = b64(other_ak)
        wrong_ak = http.post("/v1/agent/renew", json=foreign)
        assert wrong_ak.status_code == 403
        assert "not by the AK this node enrolled with" in wrong_ak.json()["reason"]


def test_the_agent_renews_its_node_svid_on_its_own(tmp_path: Path, ek_roots: Path, golden_device: BootedDevice) -> None:
    with running_hub(tmp_path / "hub", ek_roots=ek_roots, svid_ttl_s=60) as hub:
        enrolled(hub, golden_device, tmp_path / "svid")
        before = serial(tmp_path / "svid")
        (tmp_path / "boot.log").write_bytes(golden_device.event_log)
        argv = [str(Path(sys.executable).parent / "trustctl"), "agent", "run", "--hub", hub.url]
        argv += ["--svid-dir", str(tmp_path / "svid"), "--socket", str(tmp_path / "agent.sock")]
        argv += ["--state-dir", str(tmp_path / "state"), "--tpm", golden_device.tcti]
        argv += ["--event-log", str(tmp_path / "boot.log")]
        with running(argv, ready=(tmp_path / "agent.sock").exists, log=tmp_path / "agent.log"):
            deadline = time.monotonic() + 45  # a 60 s SVID renews at about 30 s
            while time.monotonic() < deadline and serial(tmp_path / "svid") == before:
                time.sleep(1)
        assert serial(tmp_path / "svid") != before, (tmp_path / "agent.log").read_text()[-2000:]
