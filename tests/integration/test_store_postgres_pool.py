"""The PostgreSQL store's pool, against a real PostgreSQL: a restart that cuts every pooled connection is
survived without one failed call, and a store call that waits (a row lock held elsewhere) holds up neither the
hub's event loop (/healthz, a cluster's poll) nor the other calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from localpeers.postgres import PostgresServer, running_postgres
from localpeers.tlsca import TestCA
from tests.support.fleet_hub import CLUSTER, DOMAIN, running_fleet_hub
from trustd.server.store import AuditEvent, DeviceRecord, SvidRecord, open_store
from trustd.server.store.postgres import WAIT_S

pytestmark = pytest.mark.integration

NODE = f"spiffe://{DOMAIN}/site/lab/node/gw-01"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running_postgres(TestCA(tmp_path_factory.mktemp("pg-ca"))) as server:
        yield server


def _waiting_on_a_lock(url: str, count: int, timeout_s: float = 10.0) -> None:
    """Until `count` sessions of this database wait on a lock."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT count(*) AS waiting FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and int(row[0]) >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"fewer than {count} sessions came to wait on the lock")


def test_a_restart_cutting_every_pooled_connection_fails_no_call(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    store = open_store(url)
    try:
        store.record_enrollment(
            DeviceRecord("ek1", NODE, "edge-gateway", {}, "000b", 100.0),
            SvidRecord("01", NODE, "ek1", 100.0, 200.0),
            AuditEvent(100.0, "enroll.complete", "enrolled", NODE),
        )
        # grow the pool: eight calls at once, each held by a lock until all eight have a connection
        holder = psycopg.connect(url)
        holder.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        threads = [threading.Thread(target=store.devices) for _ in range(8)]
        for thread in threads:
            thread.start()
        _waiting_on_a_lock(url, 8)
        holder.rollback()
        holder.close()
        for thread in threads:
            thread.join()

        postgres.restart()  # every one of those pooled connections is cut
        failures: list[BaseException] = []

        def call() -> None:
            try:
                assert [d.spiffe_id for d in store.devices()] == [NODE]
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        call()
        assert failures == []
        assert time.monotonic() - started < WAIT_S  # the dead ones dropped at once, not one backoff each
    finally:
        store.close()


def test_a_store_call_waiting_on_a_lock_holds_up_neither_healthz_nor_a_cluster_poll(
    tmp_path: Path, ek_roots: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    with running_fleet_hub(tmp_path, ek_roots=ek_roots, store_url=url) as hub:
        with hub.client(CLUSTER) as cluster:
            assert cluster.get("/v1/policy/bundle").status_code == 204  # before: the poll's own time
        holder = psycopg.connect(url)
        answers: list[int] = []
        try:
            holder.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")  # a slow query, as far as trustd sees

            def node_asks() -> None:  # the node's standing is a store look-up: it waits for the lock
                with hub.client(NODE) as node:
                    answers.append(node.get("/v1/agent/entries").status_code)

            waiting = threading.Thread(target=node_asks)
            waiting.start()
            _waiting_on_a_lock(url, 1)
            with hub.client() as anyone:
                started = time.monotonic()
                assert anyone.get("/healthz").status_code == 200
                healthz_s = time.monotonic() - started
            with hub.client(CLUSTER) as cluster:
                started = time.monotonic()
                assert cluster.get("/v1/policy/bundle").status_code == 204
                poll_s = time.monotonic() - started
            assert answers == []  # still waiting: the lock is held
        finally:
            holder.rollback()
            holder.close()
        waiting.join(timeout=30)
        assert answers == [403]  # then answered: not an enrolled node
        assert healthz_s < 1.0, f"/healthz took {healthz_s:.2f} s while a store call waited"
        assert poll_s < 1.0, f"a cluster's poll took {poll_s:.2f} s while a store call waited"
