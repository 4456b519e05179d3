"""The enrollment protocol step by step on a real TPM, so tests can tamper with one field between steps.

`trustd.agent.enroll_client.enroll` is what devices run; this mirrors it without the disk side effects, and hands
each message to the test before it is sent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation.device import AttestationKey, EndorsementKey, TPMDevice
from attestation.tpm2.constants import HashAlg
from edgetrust.protocol import b64

Body = dict[str, Any]


def make_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")]))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return csr.public_bytes(Encoding.PEM).decode()


@dataclass
class ManualEnrollment:
    tpm: TPMDevice
    http: httpx.Client
    ek: EndorsementKey = field(init=False)
    ak: AttestationKey = field(init=False)

    def __post_init__(self) -> None:
        self.ek = self.tpm.endorsement_key("rsa")
        self.ak = self.tpm.create_attestation_key("ecc")

    def challenge_body(self, *, device_class: str = "edge-gateway", node: str = "gw-01") -> Body:
        assert self.ek.certificate is not None
        return {
            "ek_certificate": b64(self.ek.certificate),
            "ek_public": b64(self.ek.public),
            "ak_public": b64(self.ak.public),
            "device_class": device_class,
            "claims": {"site": "lab", "node": node},
        }

    def post(self, path: str, body: Body) -> httpx.Response:
        return self.http.post(path, json=body)

    def answer(
        self,
        challenge: Body,
        *,
        event_log: bytes | None,
        tamper: Callable[[Body], None] | None = None,
        secret: bytes | None = None,
    ) -> Body:
        """Activate the credential, quote, and build the round-2 body (before any tampering is applied)."""
        if secret is None:
            secret = self.tpm.activate_credential(
                base64.b64decode(challenge["credential_blob"]),
                base64.b64decode(challenge["encrypted_secret"]),
            )
        selection = {HashAlg.from_label(b): pcrs for b, pcrs in challenge["pcr_selection"].items()}
        quote = self.tpm.quote(selection, base64.b64decode(challenge["nonce"]))
        body: Body = {
            "challenge_id": challenge["challenge_id"],
            "activated_secret": b64(secret),
            "attest": b64(quote.attest),
            "signature": b64(quote.signature),
            "pcr_values": {b.label: {str(i): v.hex() for i, v in vals.items()} for b, vals in quote.pcr_values.items()},
            "event_log": b64(event_log) if event_log is not None else None,
            "csr": make_csr(),
        }
        if tamper is not None:
            tamper(body)
        return body

    def run(
        self,
        *,
        event_log: bytes | None,
        device_class: str = "edge-gateway",
        tamper: Callable[[Body], None] | None = None,
    ) -> httpx.Response:
        first = self.post("/v1/enroll/challenge", self.challenge_body(device_class=device_class))
        assert first.status_code == 200, first.text
        return self.post("/v1/enroll/complete", self.answer(first.json(), event_log=event_log, tamper=tamper))
