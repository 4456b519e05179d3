"""The enrollment wire protocol, shared by trustd (server) and trustctl (device).

Binary TPM structures travel as base64 of their exact TPM wire bytes, so the hub verifies precisely what the
TPM produced. Every field has a size bound: these bodies come from devices in the open.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field

#: an RSA-4096 TPMT_PUBLIC is ~550 bytes; TPMS_ATTEST and TPMT_SIGNATURE are below 1 KiB
_MAX_TPM_B64 = 4096
#: EK certificates are 1-2 KiB; a whole vendor chain stays well below this
_MAX_CERT_B64 = 16384
#: real TCG event logs of servers reach a few hundred KiB
_MAX_EVENT_LOG_B64 = 4 * 1024 * 1024
_MAX_CLAIM = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChallengeRequest(_Strict):
    ek_certificate: str = Field(max_length=_MAX_CERT_B64, description="base64 DER EK certificate")
    ek_intermediates: list[str] = Field(default_factory=list, max_length=4)
    ek_public: str = Field(max_length=_MAX_TPM_B64, description="base64 TPMT_PUBLIC of the EK")
    ak_public: str = Field(max_length=_MAX_TPM_B64, description="base64 TPMT_PUBLIC of the AK")
    device_class: str = Field(min_length=1, max_length=_MAX_CLAIM)
    claims: dict[str, str] = Field(default_factory=dict, max_length=16)


class ChallengeResponse(_Strict):
    challenge_id: str
    credential_blob: str = Field(description="base64 TPM2B_ID_OBJECT")
    encrypted_secret: str = Field(description="base64 TPM2B_ENCRYPTED_SECRET")
    nonce: str = Field(description="base64 qualifying data the quote must carry")
    pcr_selection: dict[str, list[int]]
    expires_at: float


class EnrollRequest(_Strict):
    challenge_id: str = Field(max_length=128)
    activated_secret: str = Field(max_length=256)
    attest: str = Field(max_length=_MAX_TPM_B64, description="base64 TPMS_ATTEST")
    signature: str = Field(max_length=_MAX_TPM_B64, description="base64 TPMT_SIGNATURE")
    pcr_values: dict[str, dict[int, str]] = Field(max_length=4, description="bank -> PCR index -> hex digest")
    event_log: str | None = Field(default=None, max_length=_MAX_EVENT_LOG_B64)
    csr: str = Field(max_length=8192, description="PEM PKCS#10 for the key the device generated")
    jwt_audiences: list[str] = Field(default_factory=list, max_length=8)


class EnrollResponse(_Strict):
    spiffe_id: str
    svid_chain: str = Field(description="PEM: the X.509-SVID then its intermediates")
    bundle: str = Field(description="PEM: the trust domain's X.509 authorities")
    not_after: float
    jwt_svids: dict[str, str] = Field(default_factory=dict, description="audience -> JWT-SVID")


class RenewChallenge(_Strict):
    challenge_id: str
    nonce: str
    pcr_selection: dict[str, list[int]]
    expires_at: float


class RenewRequest(_Strict):
    """A node's renewal: a fresh quote by the AK it enrolled with, over the hub's nonce, and a new key's CSR."""

    challenge_id: str = Field(max_length=128)
    ak_public: str = Field(max_length=_MAX_TPM_B64, description="base64 TPMT_PUBLIC of the enrolled AK")
    attest: str = Field(max_length=_MAX_TPM_B64)
    signature: str = Field(max_length=_MAX_TPM_B64)
    pcr_values: dict[str, dict[int, str]] = Field(max_length=4)
    event_log: str | None = Field(default=None, max_length=_MAX_EVENT_LOG_B64)
    csr: str = Field(max_length=8192)


class RenewResponse(_Strict):
    spiffe_id: str
    svid_chain: str
    bundle: str
    not_after: float


class ErrorBody(_Strict):
    error: str
    reason: str


def b64decode_field(value: str, *, field: str) -> bytes:
    """Decode base64 from a request, naming the field when it is not base64 at all."""
    from attestation.errors import MalformedStructureError

    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedStructureError(f"field {field!r} is not valid base64: {exc}") from exc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
