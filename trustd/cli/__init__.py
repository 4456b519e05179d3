"""The `trustd` and `trustctl` commands: the only place that wires packages together.

Subcommand modules import their dependencies lazily: `trustctl enroll` on a device loads neither the server nor the
webhook (tests/unit/test_layout.py checks).
"""
