"""What the agent keeps on disk: the bundle being applied, the last one fully applied (enforced again after
a restart, even while the hub is unreachable), the rollback guard, and status reports not yet delivered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetrust._internal.files import write_public
from edgetrust.bundles.format import Bundle, unpack
from syncer.revisions import RevisionGuard

MAX_QUEUED_REPORTS = 1000  # a site cut off for weeks keeps the newest reports, not an unbounded file


class AgentState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.guard = RevisionGuard(directory / "applied-revision.json")
        self._current = directory / "current.tar.gz"
        self._good = directory / "last-known-good.tar.gz"
        self._reports = directory / "status-queue.jsonl"
        # What the two bundle files hold, parsed once: they change only through this object, and re-reading
        # them on every sync was a third of an agent's work in the 10,000-cluster simulation
        self._parsed: dict[Path, tuple[bytes, Bundle] | None] = {}
        self._queued: list[str] | None = None

    def _read(self, path: Path) -> Bundle | None:
        if path not in self._parsed:
            try:
                blob = path.read_bytes()
            except FileNotFoundError:
                self._parsed[path] = None
            else:
                self._parsed[path] = (blob, unpack(blob))
        found = self._parsed[path]
        return found[1] if found is not None else None

    def current(self) -> Bundle | None:
        return self._read(self._current)

    def last_known_good(self) -> Bundle | None:
        return self._read(self._good)

    def accept(self, blob: bytes, bundle: Bundle) -> None:
        """A verified, newer bundle becomes current; the guard moves first, so it is never offered again."""
        self.guard.advance(bundle)
        write_public(self._current, blob)
        self._parsed[self._current] = (blob, bundle)

    def mark_good(self) -> None:
        found = self._parsed.get(self._current)
        blob = found[0] if found is not None else self._current.read_bytes()
        write_public(self._good, blob)
        self._parsed[self._good] = found if found is not None else (blob, unpack(blob))

    def _queue(self) -> list[str]:
        if self._queued is None:  # read once; afterwards the file is written through from memory
            text = self._reports.read_text() if self._reports.exists() else ""
            self._queued = [line for line in text.splitlines() if line.strip()]
        return self._queued

    def queue_report(self, report: dict[str, Any]) -> None:
        lines = self._queue()
        lines.append(json.dumps(report, sort_keys=True))
        del lines[:-MAX_QUEUED_REPORTS]
        write_public(self._reports, ("\n".join(lines) + "\n").encode())

    def queued_reports(self) -> Iterator[dict[str, Any]]:
        for line in list(self._queue()):
            yield json.loads(line)

    def clear_reports(self) -> None:
        self._reports.unlink(missing_ok=True)
        self._queued = []
