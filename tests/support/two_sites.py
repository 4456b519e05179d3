"""A fleet of two store sites in one group, for the revocation tests (syncer and hub watchers alike)."""

from __future__ import annotations

from typing import Any

OPERATOR = "spiffe://edge.example/operator/admin"
FLEET: dict[str, Any] = {
    "groups": {
        "all": {
            "matchLabels": {"site-class": "edge-store"},
            "waves": [100],
            "publishers": ["spiffe://edge.example/operator/ci"],
        }
    },
    "clusters": {
        "site-a": {"labels": {"site-class": "edge-store"}},
        "site-b": {"labels": {"site-class": "edge-store"}},
    },
    "operators": [OPERATOR],
}
