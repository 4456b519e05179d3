"""Every way a policy bundle is refused, as one family; `code` goes into status reports and metrics."""

from __future__ import annotations


class BundleError(Exception):
    code = "syncer_error"

    def diagnostics(self) -> str:
        return str(self)


class BundleBuildError(BundleError):
    """The policy repository cannot become a bundle (an invalid NetworkPolicy, a bad path...)."""

    code = "bundle_build_failed"


class BundleFormatError(BundleError):
    """Not a well-formed bundle: truncated tar, unsafe paths, oversized, missing manifest."""

    code = "bundle_malformed"


class BundleSignatureError(BundleError):
    """Unsigned, signed by an unknown key, or a file does not match what was signed."""

    code = "bundle_signature_invalid"


class RollbackError(BundleError):
    """A bundle older than (or as old as) one already applied: a replay, or a rollback attack."""

    code = "bundle_rollback"


class BundleGroupError(BundleError):
    """A bundle signed for another cluster group than this cluster's (or naming none)."""

    code = "bundle_wrong_group"


class BundlePolicyError(BundleError):
    """A NetworkPolicy in the bundle is invalid, or would restrict a namespace the cluster needs to stay
    manageable (kube-system, edgetrust-system)."""

    code = "bundle_policy_refused"


class PolicyFileError(BundlePolicyError):
    """An admission policy file (policy.yaml, a site's parameters file) or a Gatekeeper file does not follow its
    format (edgetrust/schemas/policy.schema.json), or a site-specific parameter was left empty: the webhook would refuse
    to start on it, so the builder, the hub and the syncer refuse it first."""


class SourceUnreachableError(BundleError):
    """The bundle source (the hub, a mirror, a file) gave no bundle: nothing applied, the last known good kept."""

    code = "hub_unreachable"
    #: seconds the source asked to wait before the next try (a hub's 503 Retry-After), when it said
    retry_after: float | None = None


class SourceRefusedError(BundleError):
    """The source answered and refused this cluster: the hub's 401/403 (a cluster not in the fleet file, a
    revoked SVID), a mirror refusing the credentials. Nothing applied, the last known good kept. Unlike an
    unreachable source, asking again unchanged does not help: reported as a refusal, with the source's reason."""

    code = "hub_refused"

    def __init__(self, message: str, *, reason: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        if code is not None:
            self.code = code


class SourceRequestError(SourceRefusedError):
    """The source says the request itself is wrong (another 4xx: a group it has nothing published for, an
    artifact the mirror does not hold): this syncer's configuration, or our bug. The source's message says which."""

    code = "hub_bad_request"


class OversizedAnswerError(SourceUnreachableError):
    """The hub's answer passed the agent's bound: refused like an unreachable hub (nothing applied, the last
    known good kept), with its own code so that the report says why."""

    code = "hub_answer_refused"
