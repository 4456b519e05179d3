"""Slowloris, bounded: many TLS connections that each send half a request head and then wait.

The connections live on an asyncio loop in a background thread, so the test goes on talking to the server
meanwhile; they stop on their own after `max_s` and are all closed when the context exits.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"


@dataclass
class HalfHeaders:
    count: int
    opened: int = 0
    failed: list[str] = field(default_factory=list)
    #: seconds after the attack opened until the server closed each connection
    closed_at: list[float] = field(default_factory=list)
    started: float = 0.0
    _done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_closed(self, *, timeout_s: float) -> int:
        """Wait until the server closed every connection (or `timeout_s`); returns how many it closed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.closed_at) >= self.opened:
                    break
            time.sleep(0.1)
        with self._lock:
            return len(self.closed_at)

    def closed_after_s(self) -> float:
        with self._lock:
            return max(self.closed_at, default=0.0)


@contextmanager
def half_headers(host: str, port: int, *, ca_file: Path, count: int, max_s: float = 60.0) -> Iterator[HalfHeaders]:
    attack = HalfHeaders(count)
    context = ssl.create_default_context(cafile=str(ca_file))
    ready = threading.Event()
    stop = threading.Event()

    async def one(opened_all: asyncio.Event) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname=host), 30
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            with attack._lock:
                attack.failed.append(repr(exc))
            return
        with attack._lock:
            attack.opened += 1
        try:
            with suppress(OSError, ssl.SSLError):  # a server that closed it already: counted as closed below
                writer.write(HALF_HEAD)
                await writer.drain()
            await opened_all.wait()
            with suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                await reader.read()  # b"" (or an error) once the server closes it
            with attack._lock:
                attack.closed_at.append(time.monotonic() - attack.started)
        finally:
            writer.close()

    async def main() -> None:
        opened_all = asyncio.Event()
        tasks = [asyncio.create_task(one(opened_all)) for _ in range(count)]
        while True:  # every connection opened (or failed)
            with attack._lock:
                if attack.opened + len(attack.failed) >= count:
                    break
            await asyncio.sleep(0.05)
        attack.started = time.monotonic()
        opened_all.set()
        ready.set()
        deadline = time.monotonic() + max_s
        while not stop.is_set() and time.monotonic() < deadline and not all(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        attack._done.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(timeout=120)
    try:
        yield attack
    finally:
        stop.set()
        thread.join(timeout=30)


def silent_connections_closed_after(host: str, port: int, *, count: int, max_s: float) -> list[float]:
    """Open `count` TCP connections to a TLS port that never send a ClientHello; returns, per connection, the
    seconds until the server closed it (`max_s` where it did not: the caller's assertion fails)."""

    async def one() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            # b"" or a reset once the server closes it; a timeout (an OSError too) leaves about max_s elapsed
            with suppress(OSError):
                await asyncio.wait_for(reader.read(), max_s)
            return time.monotonic() - started
        finally:
            writer.close()

    async def main() -> list[float]:
        return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(main())
