"""`trustctl agent`: the node agent. It keeps the node's workloads supplied with SPIFFE identities (the SPIFFE
Workload API on a unix socket), obtained from the hub for the registration entries parented to this node."""
