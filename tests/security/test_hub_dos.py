"""Denial of service against the real trustd process (`trustd serve`, its SQLite store, a swtpm's real EK
certificate): unauthenticated posts must not grow the store, and idle TLS connections (slowloris) must not
stop it answering."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from attestation.device import TPMDevice
from edgetrust.spiffe.id import TrustDomain
from localpeers.hub import HubProcess, hub_process
from localpeers.nodes import enroll_node
from localpeers.postgres import running_postgres
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from tests.integration.conftest import BootedDevice
from tests.support.protocol import ManualEnrollment
from tests.support.slowloris import half_headers, silent_connections_closed_after
from trustd.agent.renewal_client import renew_node
from trustd.server.ca import SpiffeCA
from trustd.server.hub import KEEP_ALIVE_S

pytestmark = pytest.mark.integration

GARBAGE_POSTS = 10_000
HEADER_TIMEOUT_S = 8.0
HANDSHAKE_TIMEOUT_S = 3.0


def _store_bytes(data_dir: Path) -> int:
    """The store's files: the database and, while trustd runs, its WAL."""
    return sum(p.stat().st_size for p in data_dir.glob("trustd.db*"))


def _rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "trustd.db") as db:
        return list(db.execute(sql).fetchall())


@contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _garbage(replay: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(kind, body): malformed JSON, a bad EK, a replayed round 1 with huge claims, a plain replayed round 1."""
    huge = dict(replay, claims={"site": "lab", "node": "x" * (340 * 1024)})
    posts: list[tuple[str, bytes]] = []
    for i in range(GARBAGE_POSTS):
        kind = ("malformed", "bad_ek", "huge_claims", "replay")[i % 4]
        if kind == "malformed":
            body = b'{"ek_certificate": "' + secrets.token_hex(8).encode()
        elif kind == "bad_ek":
            body = json.dumps(dict(replay, ek_public=base64.b64encode(secrets.token_bytes(300)).decode())).encode()
        elif kind == "huge_claims":
            body = json.dumps(huge).encode()
        else:
            body = json.dumps(dict(replay, claims={"site": "lab", "node": f"n{i}"})).encode()
        posts.append((kind, body))
    return posts


async def _post_all(hub: HubProcess, posts: list[tuple[str, bytes]]) -> Counter[tuple[str, int, str]]:
    outcomes: Counter[tuple[str, int, str]] = Counter()
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for post in posts:
        queue.put_nowait(post)
    context = ssl.create_default_context(cafile=str(hub.ca_bundle))

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=hub.url, verify=context, timeout=30) as http:
            while not queue.empty():
                kind, body = queue.get_nowait()
                answer = await http.post(
                    "/v1/enroll/challenge", content=body, headers={"content-type": "application/json"}
                )
                code = answer.json().get("error", "") if answer.status_code != 200 else ""
                outcomes[(kind, answer.status_code, str(code))] += 1

    await asyncio.gather(*(worker() for _ in range(8)))
    return outcomes


def test_ten_thousand_garbage_enrollment_posts_grow_the_store_by_less_than_a_megabyte(
    golden_device: BootedDevice, ek_roots: Path, tmp_path: Path
) -> None:
    with TPMDevice(golden_device.tcti) as tpm, httpx.Client() as unused:
        replay = ManualEnrollment(tpm, unused).challenge_body()  # the device's round 1, all public values
    with hub_process(tmp_path, ek_roots=ek_roots):
        pass  # a first start makes the schema, the CA and the keys
    data = tmp_path / "hub"
    before = _store_bytes(data)
    with hub_process(tmp_path, ek_roots=ek_roots) as hub:
        outcomes = asyncio.run(_post_all(hub, _garbage(replay)))
        during = _store_bytes(data)
    grown = _store_bytes(data) - before

    quarter = GARBAGE_POSTS // 4
    by_kind = Counter({(kind, status, code): n for (kind, status, code), n in outcomes.items()})
    assert sum(n for (kind, status, _), n in by_kind.items() if kind == "malformed" and status == 422) == quarter
    assert sum(n for (kind, status, _), n in by_kind.items() if kind == "bad_ek" and status in (400, 403)) == quarter
    # a limit refuses, never truncates: every huge claim is a 400 naming the limit
    assert by_kind[("huge_claims", 400, "claims_too_large")] == quarter
    assert by_kind[("replay", 200, "")] == quarter  # round 1 proves nothing: it is answered, but not hoarded
    assert grown < 1024 * 1024, f"the store grew by {grown} bytes ({during - before} while running)"

    # at most 4 pending challenges for the replayed EK, whatever the number of replays
    assert _rows(data, "SELECT COUNT(*) FROM challenges")[0][0] <= 4
    # the refusals are aggregated, and the audit still says what happened, to the last one
    refused = _rows(data, "SELECT event, subject, detail, count FROM audit WHERE outcome = 'refused'")
    assert len(refused) < 50, f"{len(refused)} audit rows for {GARBAGE_POSTS} posts"
    counts: Counter[str] = Counter()
    for _event, _subject, detail, count in refused:
        fields = json.loads(detail)
        assert fields["source"] == "127.0.0.1"
        assert fields["reason"]
        counts[fields["code"]] += count
    assert counts["claims_too_large"] == quarter
    assert sum(counts.values()) == 2 * quarter  # bad EKs and huge claims; malformed JSON never reached enrollment
    too_large = next(json.loads(d) for _e, _s, d, _c in refused if json.loads(d)["code"] == "claims_too_large")
    assert "limited to 256" in too_large["reason"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None: the hub's embedded SQLite file; else a database on a real PostgreSQL (TLS, password)."""
    if request.param == "sqlite":
        yield None
        return
    with running_postgres(TestCA(tmp_path / "pg-ca")) as server:
        yield server.new_database()


def _challenge_count(data_dir: Path, store_url: str | None) -> int:
    if store_url is None:
        return int(_rows(data_dir, "SELECT COUNT(*) FROM challenges")[0][0])
    with psycopg.connect(store_url) as db:
        row = db.execute("SELECT COUNT(*) FROM challenges").fetchone()
        return int(row[0]) if row else -1


def test_expired_challenges_are_purged_by_the_running_hub(
    golden_device: BootedDevice, ek_roots: Path, tmp_path: Path, store_url: str | None
) -> None:
    with TPMDevice(golden_device.tcti) as tpm, httpx.Client() as unused:
        manual = ManualEnrollment(tpm, unused)
        bodies = [manual.challenge_body(node=f"n{i}") for i in range(3)]
    bodies.append(dict(bodies[0], ek_public=bodies[0]["ak_public"]))  # refused: not this certificate's EK
    store_args = () if store_url is None else ("--store", store_url)
    with (
        _env(TRUSTD_CHALLENGE_TTL_S="5"),
        hub_process(tmp_path, ek_roots=ek_roots, extra_args=store_args) as hub,
        httpx.Client(base_url=hub.url, verify=ssl.create_default_context(cafile=str(hub.ca_bundle))) as http,
    ):
        answers = [http.post("/v1/enroll/challenge", json=b).status_code for b in bodies]
        assert answers == [200, 200, 200, 403]
        assert _challenge_count(hub.data_dir, store_url) == 3
        deadline = time.monotonic() + 20  # TTL 5 s, then the hub's upkeep (every 5 s with this TTL)
        while _challenge_count(hub.data_dir, store_url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _challenge_count(hub.data_dir, store_url) == 0  # no request came: the periodic upkeep did it
        assert http.get("/healthz").status_code == 200


def _policy_args(workdir: Path) -> tuple[str, ...]:
    """A fleet with one cluster, so that the hub serves long polls (no bundle released: each poll waits)."""
    keys = workdir / "publisher-keys"
    keys.mkdir(parents=True, exist_ok=True)
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    (keys / "ci-1.pem").write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    fleet = {
        "groups": {"all": {"matchLabels": {"site-class": "edge-gateway"}, "publishers": []}},
        "clusters": {"site-a": {"labels": {"site-class": "edge-gateway"}}},
    }
    (workdir / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    return ("--fleet", str(workdir / "fleet.yaml"), "--policy-keys", str(keys))


def _long_poll(hub: HubProcess, workdir: Path, *, wait_s: float) -> tuple[int, float]:
    """A cluster's long poll for its bundle: (status, seconds the hub held it)."""
    ca = SpiffeCA.load(hub.data_dir / "ca", trust_domain=TrustDomain.parse("edge.example"))
    cert, key = issue_svid_files(ca, "spiffe://edge.example/cluster/site-a", workdir / "cluster-svid")
    context = ssl.create_default_context(cafile=str(hub.ca_bundle))
    context.load_cert_chain(str(cert), str(key))
    started = time.monotonic()
    answer = httpx.get(f"{hub.url}/v1/policy/bundle", params={"wait": wait_s}, verify=context, timeout=wait_s + 10)
    return answer.status_code, time.monotonic() - started


def test_slowloris_thousand_half_headers_stop_neither_healthz_nor_enrollment_renewal_or_long_polls(
    golden_device: BootedDevice, ek_roots: Path, tmp_path: Path
) -> None:
    with (
        _env(TRUSTD_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), TRUSTD_TLS_HANDSHAKE_TIMEOUT_S=str(HANDSHAKE_TIMEOUT_S)),
        hub_process(tmp_path, ek_roots=ek_roots, extra_args=_policy_args(tmp_path)) as hub,
    ):
        port = int(hub.url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(hub.ca_bundle))
        # a cluster's connection kept alive between polls, from the attacker's address: it must survive
        kept = httpx.Client(
            base_url=hub.url, verify=context, timeout=5, limits=httpx.Limits(keepalive_expiry=KEEP_ALIVE_S)
        )
        kept_port = _client_port(kept.get("/healthz"))
        with half_headers("127.0.0.1", port, ca_file=hub.ca_bundle, count=1000) as attack:
            assert attack.opened == 1000, attack.failed[:3]
            with httpx.Client(base_url=hub.url, verify=context, timeout=5) as http:
                assert http.get("/healthz").status_code == 200
            node = enroll_node(
                hub.url,
                hub.ca_bundle,
                tcti=golden_device.tcti,
                event_log=golden_device.event_log,
                out_dir=tmp_path / "n",
            )
            assert node.spiffe_id == "spiffe://edge.example/site/lab/node/gw-01"
            renewed = renew_node(
                hub=hub.url, svid_dir=tmp_path / "n", tcti=golden_device.tcti, event_log=golden_device.event_log
            )
            assert renewed.spiffe_id == node.spiffe_id
            # a long poll is a request in progress: held for its whole wait, past the header deadline
            status, held = _long_poll(hub, tmp_path, wait_s=HEADER_TIMEOUT_S + 3)
            assert status == 204
            assert held >= HEADER_TIMEOUT_S + 2.5, f"the long poll was answered after {held:.1f}s"
            # and the server itself closed every half-header connection, within the deadline
            closed = attack.wait_closed(timeout_s=HEADER_TIMEOUT_S + 10)
            assert closed == attack.opened, f"{attack.opened - closed} half-header connections left open"
            assert attack.closed_after_s() <= HEADER_TIMEOUT_S + 2
        # connections that never even start TLS are closed after the handshake timeout (asyncio's default: 60 s)
        waited = silent_connections_closed_after("127.0.0.1", port, count=100, max_s=HANDSHAKE_TIMEOUT_S + 10)
        assert max(waited) <= HANDSHAKE_TIMEOUT_S + 2, f"a silent connection stayed open {max(waited):.1f}s"
        try:  # the same TLS connection still serves: no reconnect, no handshake (fleet perf)
            again = kept.get("/healthz")
            assert again.status_code == 200
            assert _client_port(again) == kept_port
        finally:
            kept.close()


def test_connections_past_the_cap_are_refused_at_once_not_queued_and_long_polls_are_never_evicted(
    ek_roots: Path, tmp_path: Path
) -> None:
    cap, wait_s = 16, 6.0
    with (
        _env(TRUSTD_MAX_CONNECTIONS=str(cap)),
        hub_process(tmp_path, ek_roots=ek_roots, extra_args=_policy_args(tmp_path)) as hub,
    ):
        results: list[tuple[int, float]] = []
        polls = [
            threading.Thread(target=lambda i=i: results.append(_long_poll(hub, tmp_path / f"c{i}", wait_s=wait_s)))
            for i in range(cap)
        ]
        for poll in polls:
            poll.start()
        time.sleep(2)  # every poll is being held
        context = ssl.create_default_context(cafile=str(hub.ca_bundle))
        started = time.monotonic()
        refused = httpx.get(f"{hub.url}/healthz", verify=context, timeout=5)
        assert refused.status_code == 503
        assert refused.json()["error"] == "too_many_connections"
        assert time.monotonic() - started < 2  # refused now, not queued
        for poll in polls:
            poll.join(timeout=wait_s + 15)
        # the polls at the cap were neither cut nor evicted: each was held for its whole wait
        assert sorted(status for status, _ in results) == [204] * cap
        assert min(held for _, held in results) >= wait_s - 0.5
        assert httpx.get(f"{hub.url}/healthz", verify=context, timeout=5).status_code == 200


def _client_port(answer: httpx.Response) -> int:
    return int(answer.extensions["network_stream"].get_extra_info("client_addr")[1])
