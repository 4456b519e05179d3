"""The policy bundle: its format, signing and verification, NetworkPolicy validation, the revocation list (built by the
hub, read at the edge), OCI transport and the review of a policy repository.
"""
