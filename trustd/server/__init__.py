"""The hub (`trustd serve`): enrollment, renewal, the CA, the store, policy distribution, revocation, federation and
their HTTP API.

Imports libraries only (attestation, edgetrust), never the device side (trustd.agent) or another deployable.
"""
