"""The OCI distribution client every deployable shares: the webhook reads images and signatures with it, the
syncer pulls policy bundles with it, `trustctl policy push` publishes them with it.

One client, one set of guarantees: every answer is read with a bound (edgetrust/_internal/bounded.py), every
manifest asked for by digest and every blob is hashed in its digest's own algorithm, credentials (Basic, or the
distribution token flow) go only to the registry they were configured for, and every failure is an OCIError.
"""
