"""Every way the webhook refuses an image or fails to decide, as one family; `code` goes into answers and metrics."""

from __future__ import annotations


class AdmissionError(Exception):
    code = "admission_error"

    def diagnostics(self) -> str:
        return str(self)


class ReviewError(AdmissionError):
    """The AdmissionReview itself is unusable (not JSON, wrong apiVersion, no uid...)."""

    code = "bad_review"


class WorkloadShapeError(AdmissionError):
    """A pod-bearing object we will not judge in part: too many containers, or containers not shaped as pods'."""

    code = "workload_refused"


class ConfigError(AdmissionError):
    code = "config_invalid"


class ImageReferenceError(AdmissionError):
    code = "bad_image_reference"


class RegistryError(AdmissionError):
    code = "registry_error"


class RegistryUnreachableError(RegistryError):
    """Connection refused, timed out, TLS failed or 5xx: the registry may hold the answer but we cannot ask."""

    code = "registry_unreachable"


class ManifestNotFoundError(RegistryError):
    code = "manifest_not_found"


class RegistryAuthError(RegistryError):
    """The registry (or its token service) wants credentials the webhook does not have, or refused its own."""

    code = "registry_auth_failed"


class BlobMismatchError(RegistryError):
    """Content served under a digest does not hash to it: the registry (or a cache in front) lied."""

    code = "blob_digest_mismatch"


class SignatureError(AdmissionError):
    code = "signature_invalid"


class NoSignatureError(SignatureError):
    code = "signature_missing"


class PayloadMismatchError(SignatureError):
    """A good signature over a payload that names another image: copied from elsewhere."""

    code = "signature_payload_mismatch"


class PolicyDecisionError(AdmissionError):
    code = "policy_decision_failed"


class OpaUnavailableError(PolicyDecisionError):
    code = "opa_unavailable"


class PolicySwapError(AdmissionError):
    """A new policy set was not put in force (OPA refused it, or it is not newer); the old set still is."""

    code = "policy_swap_refused"
