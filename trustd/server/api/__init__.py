"""The hub's HTTP API: one router per audience and the one authorization layer."""
