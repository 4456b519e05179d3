"""The idle long poll's fast path (trustd.server.api.policy.PollFastPath) and what wakes a held poll.

The fast path answers only the plain poll (a cluster's GET with one `wait=` number) and hands everything else to
the app, which answers it as it always has: these tests check which requests it takes, not only that answers
come back (a fast path that never fires, or one that answers a refused caller, would pass end-to-end tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.webhook import LOOPBACK_SITE
from trustd.errors import TrustdError
from trustd.server.api import authz
from trustd.server.api.authz import Authorizer, Caller, Kind, Rule
from trustd.server.api.policy import PollFastPath
from trustd.server.policy.distribution import Fleet, PolicyBundles
from trustd.server.store import open_store

REPO_POLICIES = Path(__file__).resolve().parents[4] / "policies"


def bundles_of(tmp_path: Path, *, publish: bool = True) -> PolicyBundles:
    path = tmp_path / "fleet.yaml"
    clusters = {f"s{i:02d}": {"labels": {"k": "v"}} for i in range(21)}
    group = {"matchLabels": {"k": "v"}, "canary": ["s00"], "waves": [100], "advanceAt": 90}
    path.write_text(yaml.safe_dump({"groups": {"g": {**group, "publishers": ["spiffe://t/ci"]}}, "clusters": clusters}))
    key = ec.generate_private_key(ec.SECP256R1())
    bundles = PolicyBundles(open_store("sqlite://"), Fleet.load(path), {"k": key.public_key()})
    if publish:
        files = build_files(read_repository(REPO_POLICIES, parameters=LOOPBACK_SITE), counter=1, commit="c", group="g")
        bundles.publish("g", pack(sign_files(files, SigningKey("k", key))), publisher="spiffe://t/ci")
    return bundles


class FakeAuthorizer:
    """The Authorizer's two calls the fast path makes; refuses whoever is not in `clusters`."""

    def __init__(self, clusters: set[str]) -> None:
        self.clusters = clusters
        self.rules: list[Rule] = []

    async def settle(self, scope: dict[str, Any]) -> None:
        return None

    def check(self, scope: dict[str, Any], rule: Rule, path_params: Any = None) -> Caller:
        self.rules.append(rule)
        cluster = scope.get("test_cluster", "")
        if cluster not in self.clusters:
            raise TrustdError("refused")
        return Caller(f"spiffe://t/cluster/{cluster}", Kind.CLUSTER, cluster)


async def call(
    fast: PollFastPath, *, method: str = "GET", query: bytes = b"wait=0", cluster: str = "s00", headers: Any = ()
) -> list[dict[str, Any]]:
    scope = {
        "type": "http",
        "method": method,
        "path": "/v1/policy/bundle",
        "query_string": query,
        "headers": list(headers),
        "test_cluster": cluster,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await fast(scope, receive, send)
    return sent


def fast_path(tmp_path: Path, clusters: set[str]) -> tuple[PollFastPath, list[dict[str, Any]], FakeAuthorizer]:
    to_app: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        to_app.append(scope)

    authorizer = FakeAuthorizer(clusters)
    return PollFastPath(app, bundles_of(tmp_path), cast(Authorizer, authorizer)), to_app, authorizer


def test_a_plain_poll_is_answered_by_the_fast_path_under_the_cluster_rule(tmp_path: Path) -> None:
    fast, to_app, authorizer = fast_path(tmp_path, {"s00", "s05"})
    sent = asyncio.run(call(fast, query=b"wait=0.0"))
    assert to_app == []
    assert authorizer.rules == [authz.CLUSTER]
    assert sent[0]["status"] == 200  # the canary has the bundle
    etag = dict(sent[0]["headers"])[b"etag"]
    # unchanged: 304 with the same ETag; s05 is not released yet: 204
    again = asyncio.run(call(fast, headers=[(b"if-none-match", etag)]))
    assert again[0]["status"] == 304
    assert dict(again[0]["headers"])[b"etag"] == etag
    assert asyncio.run(call(fast, cluster="s05"))[0]["status"] == 204
    assert to_app == []


@pytest.mark.parametrize(
    ("method", "query", "cluster"),
    [
        ("GET", b"wait=nan", "s00"),
        ("GET", b"wait=61", "s00"),
        ("GET", b"wait=1e1", "s00"),
        ("GET", b"wait=1&wait=2", "s00"),
        ("GET", b"", "s00"),
        ("GET", b"wait=0", "intruder"),  # refused by the rule: the app answers the refusal, as before
        ("POST", b"wait=0", "s00"),  # reports ride on it: the app takes them
    ],
)
def test_anything_but_a_plain_poll_by_an_admitted_cluster_goes_to_the_app(
    tmp_path: Path, method: str, query: bytes, cluster: str
) -> None:
    fast, to_app, _ = fast_path(tmp_path, {"s00"})
    assert asyncio.run(call(fast, method=method, query=query, cluster=cluster)) == []
    assert len(to_app) == 1
