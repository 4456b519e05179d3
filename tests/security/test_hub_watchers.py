"""A revocation made through another replica reaches a running hub by its own watcher.

The attack this stops: a cluster revoked at one replica keeps being served by another, whose long polls
never wake, because the watcher that notices revocations in the shared store did not run. Test hubs now run
as `trustd serve` runs them (lifespan on), and nothing here drives the watcher: a cluster holds a long poll
open on the running hub, the revocation is written to the store by a second replica's code, and the poll must
wake within a few seconds (not at its 30 s end), after which the revoked cluster is refused.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.hub import running_policy_hub
from tests.support.svid import issue_svid_files
from trustd.policy_api import REVOCATIONS_HEADER
from trustd.revocations import Revocations, load_or_create_key
from trustd.spiffe_id import TrustDomain
from trustd.store import open_store

OPERATOR = "spiffe://edge.example/operator/admin"
FLEET = {
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
WAIT_S = 30


def _client(url: str, roots: Path, files: tuple[Path, Path]) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(roots))
    context.load_cert_chain(str(files[0]), str(files[1]))
    return httpx.Client(base_url=url, verify=context, timeout=WAIT_S + 15)


def test_revocation_at_another_replica_wakes_this_hubs_long_polls_by_itself(tmp_path: Path) -> None:
    public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with running_policy_hub(tmp_path / "hub", fleet=FLEET, publisher_keys={"ci-1": public}) as hub:
        site_a = issue_svid_files(hub.hub.ca, "spiffe://edge.example/cluster/site-a", tmp_path / "site-a")
        site_b = issue_svid_files(hub.hub.ca, "spiffe://edge.example/cluster/site-b", tmp_path / "site-b")
        with _client(hub.url, hub.ca_bundle, site_a) as a, _client(hub.url, hub.ca_bundle, site_b) as b:
            first = a.get("/v1/policy/bundle")
            before = first.headers[REVOCATIONS_HEADER]
            assert b.get("/v1/policy/bundle").status_code in (204, 304)

            # site-a holds a long poll open; nothing else reaches the hub while it waits
            answers: list[httpx.Response] = []
            poll = threading.Thread(
                target=lambda: answers.append(
                    a.get("/v1/policy/bundle", params={"wait": WAIT_S}, headers={REVOCATIONS_HEADER: before})
                )
            )
            poll.start()
            time.sleep(1.5)
            assert not answers, "the long poll answered before anything changed"

            # another replica (same store, its own code and key) revokes site-b
            settings = hub.hub.settings
            other_store = open_store(settings.effective_store_url)
            other = Revocations(other_store, load_or_create_key(settings.revocations_dir), TrustDomain("edge.example"))
            asked = time.monotonic()
            other.revoke("spiffe://edge.example/cluster/site-b", reason="stolen", by=OPERATOR)
            other_store.close()
            poll.join(WAIT_S + 15)
            waited = time.monotonic() - asked
            (woke,) = answers

            # the running hub's watcher noticed: the poll woke long before its end, carrying the new list
            assert woke.status_code in (204, 304), woke.text
            assert waited < 10, f"the long poll woke after {waited:.1f} s: the watcher did not run"
            assert woke.headers[REVOCATIONS_HEADER] != before
            refused = b.get("/v1/policy/bundle")
            assert refused.status_code == 403
            assert "is revoked" in refused.json()["reason"]
            # nothing else changed: site-a is still served, and the list holds exactly the one revocation
            assert a.get("/v1/policy/bundle").status_code in (204, 304)
            assert [r.spiffe_id for r in hub.hub.store.revocations()] == ["spiffe://edge.example/cluster/site-b"]
