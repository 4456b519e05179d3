"""What the agent keeps on disk: the bundle being applied, the last one fully applied (enforced again after
a restart, even while the hub is unreachable), the rollback guard, and status reports not yet delivered."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from syncer.bundle import Bundle, unpack
from syncer.revisions import RevisionGuard

MAX_QUEUED_REPORTS = 1000  # a site cut off for weeks keeps the newest reports, not an unbounded file


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class AgentState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.guard = RevisionGuard(directory / "applied-revision.json")
        self._current = directory / "current.tar.gz"
        self._good = directory / "last-known-good.tar.gz"
        self._reports = directory / "status-queue.jsonl"

    def _read(self, path: Path) -> Bundle | None:
        try:
            return unpack(path.read_bytes())
        except FileNotFoundError:
            return None

    def current(self) -> Bundle | None:
        return self._read(self._current)

    def last_known_good(self) -> Bundle | None:
        return self._read(self._good)

    def accept(self, blob: bytes, bundle: Bundle) -> None:
        """A verified, newer bundle becomes current; the guard moves first, so it is never offered again."""
        self.guard.advance(bundle)
        _write_atomic(self._current, blob)

    def mark_good(self) -> None:
        _write_atomic(self._good, self._current.read_bytes())

    def queue_report(self, report: dict[str, Any]) -> None:
        lines = self._reports.read_text().splitlines() if self._reports.exists() else []
        lines.append(json.dumps(report, sort_keys=True))
        _write_atomic(self._reports, ("\n".join(lines[-MAX_QUEUED_REPORTS:]) + "\n").encode())

    def queued_reports(self) -> Iterator[dict[str, Any]]:
        if not self._reports.exists():
            return
        for line in self._reports.read_text().splitlines():
            if line.strip():
                yield json.loads(line)

    def clear_reports(self) -> None:
        self._reports.unlink(missing_ok=True)
