"""The device's half of enrollment: drive the TPM, talk to trustd, write the identity to disk.

The device generates its SVID key itself (it never leaves the device) and sends only a CSR. What is written:
`svid.pem` (chain), `svid.key` (0600), `bundle.pem` (the trust domain's roots).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation.device import AKKind, EKKind, TPMDevice
from attestation.tpm2.constants import HashAlg
from edgetrust._internal import hubclient
from edgetrust._internal.files import UnsafeDirectoryError, private_directory, write_private, write_public
from edgetrust._internal.hubclient import DEFAULT_TIMEOUT_S, HubCallError
from edgetrust.protocol import ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse, b64
from trustd.errors import EnrollmentError, HubUnreachableError, PrivateFileError, TrustdError


@dataclass(frozen=True, slots=True)
class Enrollment:
    spiffe_id: str
    not_after: float
    svid_path: Path
    key_path: Path
    bundle_path: Path
    jwt_svids: Mapping[str, str]


def enroll(
    *,
    server: str,
    tcti: str,
    out_dir: Path,
    device_class: str,
    claims: Mapping[str, str],
    ca_bundle: Path,
    ek_kind: EKKind = "rsa",
    ak_kind: AKKind = "ecc",
    event_log: bytes | None = None,
    jwt_audiences: tuple[str, ...] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Enrollment:
    """Run both round trips; raises EnrollmentError with the hub's reason when refused."""
    key, csr = new_key_and_csr()
    with TPMDevice(tcti) as tpm, _client(server, ca_bundle, timeout_s) as http:
        ek = tpm.endorsement_key(ek_kind)
        if ek.certificate is None:
            raise EnrollmentError(
                "this TPM has no EK certificate in NV; it cannot prove who made it (provision one, "
                "e.g. swtpm_setup --create-ek-cert, or ask the vendor)"
            )
        ak = tpm.create_attestation_key(ak_kind)
        challenge = ChallengeResponse.model_validate(
            post_to_hub(
                http,
                "/v1/enroll/challenge",
                ChallengeRequest(
                    ek_certificate=b64(ek.certificate),
                    ek_public=b64(ek.public),
                    ak_public=b64(ak.public),
                    device_class=device_class,
                    claims=dict(claims),
                ).model_dump(),
            )
        )
        secret = tpm.activate_credential(
            base64.b64decode(challenge.credential_blob), base64.b64decode(challenge.encrypted_secret)
        )
        selection = {HashAlg.from_label(bank): pcrs for bank, pcrs in challenge.pcr_selection.items()}
        quote = tpm.quote(selection, base64.b64decode(challenge.nonce))
        answer = EnrollResponse.model_validate(
            post_to_hub(
                http,
                "/v1/enroll/complete",
                EnrollRequest(
                    challenge_id=challenge.challenge_id,
                    activated_secret=b64(secret),
                    attest=b64(quote.attest),
                    signature=b64(quote.signature),
                    pcr_values={
                        bank.label: {i: v.hex() for i, v in values.items()} for bank, values in quote.pcr_values.items()
                    },
                    event_log=b64(event_log) if event_log is not None else None,
                    csr=csr.decode(),
                    jwt_audiences=list(jwt_audiences),
                ).model_dump(),
            )
        )
    private_out(out_dir)  # the key is 0600, and the directory holding it 0700
    key_path, svid_path, bundle_path = out_dir / "svid.key", out_dir / "svid.pem", out_dir / "bundle.pem"
    write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_public(svid_path, answer.svid_chain.encode())
    write_public(bundle_path, answer.bundle.encode())
    # the AK, as this TPM wrapped it (useless on another TPM), and what to quote with it: for renewals
    write_private(out_dir / "ak.priv", ak.private_blob)
    write_public(out_dir / "ak.pub", ak.public_blob)
    return Enrollment(
        spiffe_id=answer.spiffe_id,
        not_after=answer.not_after,
        svid_path=svid_path,
        key_path=key_path,
        bundle_path=bundle_path,
        jwt_svids=answer.jwt_svids,
    )


def private_out(path: Path) -> Path:
    """`private_directory`, refused as a trustd error (trustctl says why and exits 1)."""
    try:
        return private_directory(path)
    except UnsafeDirectoryError as exc:
        raise PrivateFileError(str(exc)) from exc


def _client(server: str, ca_bundle: Path, timeout_s: float) -> httpx.Client:
    if not server.startswith("https://"):
        raise EnrollmentError(
            f"refusing to enroll over {server.split(':', 1)[0]}: trustd is only reached over https://"
        )
    if not ca_bundle.is_file():
        raise EnrollmentError(
            f"the hub's CA bundle {ca_bundle} does not exist (get it from the operator: trustd bundle)"
        )
    try:
        return hubclient.client(server, hubclient.tls_context(ca_bundle), timeout_s=timeout_s)
    except HubCallError as exc:
        raise hub_failure(exc) from exc


def new_key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh P-256 key for an SVID and its CSR (PEM): the key never leaves the device."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetrust")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    return key, csr


def post_to_hub(
    http: httpx.Client, path: str, body: dict[str, object], *, action: str = "enrollment"
) -> dict[str, object]:
    """POST a JSON body; the hub's refusal becomes EnrollmentError naming its reason, an unavailable or
    unreachable hub HubUnreachableError (edgetrust/_internal/hubclient.py says which answer is which)."""
    try:
        return hubclient.call(http, "POST", path, json=body, action=action)
    except HubCallError as exc:
        raise hub_failure(exc) from exc


def hub_failure(exc: HubCallError, refused: type[TrustdError] = EnrollmentError) -> TrustdError:
    """A hub call's failure in trustd's family: unreachable or unavailable (503, any 5xx) decided nothing
    (`HubUnreachableError`, exit 3); anything else is `refused`, naming the hub's reason."""
    return exc.convert(unreachable=HubUnreachableError, otherwise=refused)
