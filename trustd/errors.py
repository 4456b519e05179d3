"""Every way the hub refuses or fails, as one exception family; `code` goes into API answers and audit."""

from __future__ import annotations


class TrustdError(Exception):
    code = "trustd_error"

    def diagnostics(self) -> str:
        return str(self)


class InvalidSpiffeIdError(TrustdError):
    code = "invalid_spiffe_id"


class CSRError(TrustdError):
    code = "invalid_csr"


class CAConfigError(TrustdError):
    code = "ca_config_invalid"


class EnrollmentError(TrustdError):
    code = "enrollment_refused"


class ClaimsTooLargeError(EnrollmentError):
    """A claim over the size the hub stores: refused whole (400), never truncated."""

    code = "claims_too_large"
    http_status = 400


class ChallengeError(TrustdError):
    """Unknown, expired or already-answered challenge."""

    code = "challenge_invalid"


class JWTSVIDError(TrustdError):
    code = "invalid_jwt_svid"


class StoreError(TrustdError):
    code = "store_error"


class StoreConflictError(StoreError):
    """The write would contradict stored state (a name held by another TPM, a duplicate serial)."""

    code = "identity_conflict"


class HubUnreachableError(TrustdError):
    """trustd could not be reached (network, TLS): nothing was decided about the device."""

    code = "hub_unreachable"
