"""The node's side of renewal: its TPM quotes again, with the AK it enrolled with, over the hub's fresh nonce,
and the new SVID (a new key, made here) replaces the old one on disk only once the hub has signed it."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.device import TPMDevice
from attestation.tpm2.constants import HashAlg
from edgetrust._internal import files, hubclient
from edgetrust._internal.hubclient import HubCallError
from edgetrust.protocol import RenewChallenge, RenewRequest, RenewResponse, b64
from trustd.agent.enroll_client import hub_failure, new_key_and_csr, post_to_hub

JITTER = 0.1


@dataclass(frozen=True, slots=True)
class Renewed:
    spiffe_id: str
    serial: int
    not_after: float


def renew_at(svid_path: Path) -> float:
    """When to renew: half the SVID's lifetime, give or take 5 %, so a fleet does not renew in one burst."""
    cert = x509.load_pem_x509_certificates(svid_path.read_bytes())[0]
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    return start + (end - start) * (0.5 + random.uniform(-JITTER / 2, JITTER / 2))  # noqa: S311 - load spreading


def renew_node(*, hub: str, svid_dir: Path, tcti: str, event_log: bytes | None, timeout_s: float = 30) -> Renewed:
    try:
        http = hubclient.client(hub, hubclient.svid_context(svid_dir), timeout_s=timeout_s)
    except HubCallError as exc:
        raise hub_failure(exc) from exc
    key, csr = new_key_and_csr()
    with http, TPMDevice(tcti) as tpm:
        challenge = RenewChallenge.model_validate(post_to_hub(http, "/v1/agent/renew/challenge", {}, action="renewal"))
        ak = tpm.load_attestation_key((svid_dir / "ak.priv").read_bytes(), (svid_dir / "ak.pub").read_bytes())
        selection = {HashAlg.from_label(bank): pcrs for bank, pcrs in challenge.pcr_selection.items()}
        quote = tpm.quote(selection, base64.b64decode(challenge.nonce))
        body = RenewRequest(
            challenge_id=challenge.challenge_id,
            ak_public=b64(ak.public),
            attest=b64(quote.attest),
            signature=b64(quote.signature),
            pcr_values={
                bank.label: {i: v.hex() for i, v in values.items()} for bank, values in quote.pcr_values.items()
            },
            event_log=b64(event_log) if event_log is not None else None,
            csr=csr.decode(),
        )
        answer = RenewResponse.model_validate(post_to_hub(http, "/v1/agent/renew", body.model_dump(), action="renewal"))
    files.write_private(
        svid_dir / "svid.key.new",
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    files.write_public(svid_dir / "svid.pem.new", answer.svid_chain.encode())
    files.write_public(svid_dir / "bundle.pem", answer.bundle.encode())
    # key first, then certificate: a reader between the two renames sees the new key with the old certificate
    # for an instant at worst, and retries; never a certificate without its key. One directory fsync after
    # both: a power cut leaves the old pair or the new one
    files.replace(svid_dir / "svid.key.new", svid_dir / "svid.key", sync=False)
    files.replace(svid_dir / "svid.pem.new", svid_dir / "svid.pem")
    leaf = x509.load_pem_x509_certificates(answer.svid_chain.encode())[0]
    return Renewed(answer.spiffe_id, leaf.serial_number, answer.not_after)
