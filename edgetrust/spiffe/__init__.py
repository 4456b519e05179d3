"""SPIFFE formats shared by the hub, the node agent and federation: trust bundles and JWT-SVIDs.

One module builds and parses each format, so what the hub serves and what a peer, an agent or a workload
accepts cannot drift apart. Errors are this package's own; each caller converts them into its own family.
"""
