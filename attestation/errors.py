"""Every way TPM evidence can be refused, as one exception family.

Callers (trustd, trustctl) catch `AttestationError` once and show `diagnostics()` to a person; the
subclass names what went wrong so tests and audit logs can tell failures apart. Messages say what was
expected, what was seen and, where it helps, what to do.
"""

from __future__ import annotations


class AttestationError(Exception):
    """Base of every refusal of TPM evidence."""

    #: short machine-readable reason, used in API answers and audit events
    code = "attestation_failed"

    def diagnostics(self) -> str:
        return str(self)


class MalformedStructureError(AttestationError):
    """Bytes that do not decode as the TPM structure they claim to be (truncated, trailing, bad tag)."""

    code = "malformed_evidence"


class UnsupportedAlgorithmError(AttestationError):
    """A well-formed structure using an algorithm we do not accept (e.g. SHA-1 signatures, unknown curves)."""

    code = "unsupported_algorithm"


class UntrustedEKError(AttestationError):
    """The EK certificate does not chain to a configured manufacturer root."""

    code = "untrusted_ek"


class EKMismatchError(AttestationError):
    """The EK public key the device presented is not the one in its EK certificate."""

    code = "ek_mismatch"


class AKAttributesError(AttestationError):
    """The AK is not a restricted, fixedTPM, fixedParent signing key, so its quotes prove nothing."""

    code = "bad_ak"


class CredentialActivationError(AttestationError):
    """The device could not return the secret sealed to its EK: the AK is not in the EK's TPM."""

    code = "activation_failed"


class QuoteSignatureError(AttestationError):
    """The quote is not signed by the AK (tampered bytes or wrong key)."""

    code = "bad_quote_signature"


class NonceMismatchError(AttestationError):
    """The quote does not carry the nonce we issued: a replay or a stale quote."""

    code = "nonce_mismatch"


class PCRDigestMismatchError(AttestationError):
    """The PCR values sent do not hash to the digest the TPM signed."""

    code = "pcr_digest_mismatch"


class EventLogError(AttestationError):
    """The boot event log is malformed or does not replay to the quoted PCRs."""

    code = "event_log_invalid"


class ReferenceValueError(AttestationError):
    """The device booted something its device class does not allow."""

    code = "pcr_policy_violation"


class PolicyConfigError(AttestationError):
    """The operator's reference-value file itself is invalid (caught at load, not at enrollment)."""

    code = "policy_config_invalid"


class TPMDeviceError(AttestationError):
    """The local TPM refused or failed a command (device side only)."""

    code = "tpm_device_error"
