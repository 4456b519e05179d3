"""Wake-ups across replicas: PostgreSQL LISTEN/NOTIFY under `Store.subscribe`.

A write that other replicas must learn of at once (a bundle published, a rollout's wave opened, a revocation)
runs `pg_notify(channel)` inside its transaction, so the notification goes out on COMMIT and never for a write
rolled back. Each subscription holds one connection of its own outside the pool (a LISTEN is per connection;
a pooled one would be handed to other work) on a daemon thread that waits for notifications and calls the
listener for each.

A notification sent while the connection was down is lost: after each reconnection the listener is called
once (something may have changed meanwhile), and every subscriber also looks on a timer, so a loss costs at
most that timer's period, never a missed change. Reconnection waits follow the plane's one retry policy
(`edgetrust._internal.retry.Backoff`, full jitter).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from edgetrust._internal.retry import Backoff

log = logging.getLogger(__name__)

#: how long one wait for notifications lasts before the thread looks whether it should stop
POLL_S = 0.5
CONNECT_TIMEOUT_S = 5


class Listener:
    """One channel's subscription: `start()`, then `stop()` (at once; its thread ends within POLL_S), and
    `join()` where waiting for the thread is fine (the store's close, never the event loop)."""

    def __init__(self, url: str, channel: str, listener: Callable[[], None]) -> None:
        self._url = url
        self._channel = channel
        self._listener = listener
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"trustd-listen-{channel}", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def join(self) -> None:
        self.stop()
        self._thread.join(timeout=POLL_S + CONNECT_TIMEOUT_S + 1)

    def _run(self) -> None:
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        first = True
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as db:
                    db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    backoff.reset()
                    if not first:  # notifications sent while we were away are lost: look once
                        self._call()
                    first = False
                    self._wait(db)
            except psycopg.Error as exc:
                first = False
                delay = backoff.next_delay()
                log.warning("store notifications (%s) lost: %s; listening again in %.1f s", self._channel, exc, delay)
                self._stopping.wait(delay)

    def _wait(self, db: psycopg.Connection[Any]) -> None:
        while not self._stopping.is_set():
            for _ in db.notifies(timeout=POLL_S):
                self._call()

    def _call(self) -> None:
        try:
            self._listener()
        except RuntimeError:  # the listener's event loop closed (shutting down): nothing is waiting any more
            log.debug("store notifications (%s): nobody listens any more", self._channel)
