"""Image signatures: cosign (keyed, keyless, bundles), the Sigstore trust root, the cache."""
