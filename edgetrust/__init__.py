"""edgetrust's shared library: what the hub, the node agent, the webhook and the syncer all use.

No process of its own. Underscored modules (`_internal/`) are plumbing, free to change; the deployables
(`trustd`, `admission`, `syncer`) import from here and never from each other.
"""
