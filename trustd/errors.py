"""Every way the hub refuses or fails, as one exception family; `code` goes into API answers and audit.

Each class also says which HTTP status it is (`status`), so the API maps errors in one place
(`trustd.server.app`) and a caller can tell a refusal (403) from bad input (400), a conflict (409), and an outage
(503, with `Retry-After`): a PostgreSQL outage must never read as "you may not".
A class that does not say is a refusal: failing closed.
"""

from __future__ import annotations

from typing import ClassVar


class TrustdError(Exception):
    code = "trustd_error"
    #: the HTTP status the hub answers with when this reaches an API route
    status: ClassVar[int] = 403

    def diagnostics(self) -> str:
        return str(self)


class BadRequestError(TrustdError):
    """The request itself is wrong (a malformed name, a parameter out of range): fix it and ask again."""

    code = "bad_request"
    status = 400


class NotFoundError(TrustdError):
    code = "not_found"
    status = 404


class ConflictError(TrustdError):
    """The request contradicts stored state (a duplicate, a counter that is not newer)."""

    code = "conflict"
    status = 409


class UnavailableError(TrustdError):
    """The hub cannot decide now (its store or a peer is down): nothing was decided or recorded; retry."""

    code = "unavailable"
    status = 503
    #: seconds a client should wait before it retries (the `Retry-After` header)
    retry_after_s: ClassVar[int] = 5


class InvalidSpiffeIdError(BadRequestError):
    code = "invalid_spiffe_id"


class ReservedSpiffeIdError(BadRequestError):
    """A name in a namespace only the hub assigns (nodes, clusters, operators, publishers, the hub itself)."""

    code = "reserved_spiffe_id"


class CSRError(BadRequestError):
    code = "invalid_csr"


class CAConfigError(UnavailableError):
    code = "ca_config_invalid"


class EnrollmentError(TrustdError):
    code = "enrollment_refused"


class ClaimsTooLargeError(EnrollmentError):
    """A claim over the size the hub stores: refused whole (400), never truncated."""

    code = "claims_too_large"
    status = 400


class ChallengeError(TrustdError):
    """Unknown, expired or already-answered challenge."""

    code = "challenge_invalid"


class JWTSVIDError(BadRequestError):
    code = "invalid_jwt_svid"


class StoreError(UnavailableError):
    """The store failed or is unreachable: an outage, not a verdict."""

    code = "store_error"


class StoreConflictError(ConflictError):
    """The write would contradict stored state (a name held by another TPM, a duplicate serial)."""

    code = "identity_conflict"


class HubUnreachableError(UnavailableError):
    """trustd could not be reached (network, TLS), or answered that it is unavailable (503): nothing was decided
    about the device; retry later."""

    code = "hub_unreachable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: seconds the hub asked the caller to wait (its `Retry-After`), when it said; a retry loop obeys it
        self.retry_after = retry_after


class PrivateFileError(TrustdError):
    """A directory meant for secrets (keys, SVIDs) is not one this process can trust: refused, nothing written."""

    code = "private_file"


class MintRefusedError(TrustdError):
    """`trustd svid mint` will not mint this ID (another trust domain, the hub's, a node's, a workload's, a
    revoked one) or not for this long: nothing is issued, recorded or written."""

    code = "mint_refused"
