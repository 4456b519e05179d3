"""Every way a registry answer is refused, as one family; `code` names the class in reports and metrics.

Each error keeps `what` (the registry, repository and object asked for) apart from `problem` (what went wrong),
so that a deployable converting it into its own family at its boundary can say it in its own words.
"""

from __future__ import annotations


class OCIError(Exception):
    """The registry's answer cannot be used; nothing read from it is returned."""

    code = "registry_error"

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"{what}: {problem}")
        self.what = what
        self.problem = problem


class RegistryUnreachableError(OCIError):
    """Connection refused, timed out, TLS failed, cut off or 5xx: the registry may hold the answer, but we
    cannot ask it now."""

    code = "registry_unreachable"


class ManifestNotFoundError(OCIError):
    """The registry has no such manifest (or blob): a 404."""

    code = "manifest_not_found"


class DigestMismatchError(OCIError):
    """Content served under a digest does not hash to it: the registry (or a cache in front) lied."""

    code = "blob_digest_mismatch"


class AnswerRefusedError(OCIError):
    """The answer broke a bound (over the limit, more or less than it declared, an encoding we did not ask for)
    or is not the shape the API promises."""

    code = "registry_answer_refused"


class RegistryAuthError(OCIError):
    """The registry (or its token service) wants credentials we do not have, or refused the ones we sent."""

    code = "registry_auth_failed"


class RegistryConfigError(OCIError):
    """The client's own configuration is unusable: a credentials file that does not parse, a bad host."""

    code = "registry_config_invalid"
