"""TPM 2.0 evidence: parse it, verify it, and only then let anyone use it.

The verifier side (quote, EK chain, credential, event log, reference values) is pure Python over
`cryptography`, so the hub can run it without a TPM; the device side lives in `attestation.device`
and is the only module that imports tpm2-pytss.
"""
