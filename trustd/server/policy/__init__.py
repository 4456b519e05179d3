"""Policy distribution: fleets of cluster groups, waved rollouts, the bundle per cluster."""
