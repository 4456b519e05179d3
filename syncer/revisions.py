"""The highest bundle revision this cluster ever applied, kept on disk so no restart re-opens a rollback.

Written atomically and durably (`edgetrust._internal.files`: file and directory fsynced) before a bundle is
applied: a crash mid-apply leaves the guard at the new revision, and the agent converges forward on restart,
never back.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgetrust._internal.files import write_public
from edgetrust.bundles.errors import BundleError, RollbackError
from edgetrust.bundles.format import Bundle


class RevisionGuard:
    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def highest(self) -> int:
        try:
            state = json.loads(self._path.read_text())
        except FileNotFoundError:
            return -1
        except (OSError, ValueError) as exc:
            # an unreadable guard must not silently reset to "anything goes"
            raise BundleError(f"revision guard {self._path} is unreadable: {exc}") from exc
        counter = state.get("counter") if isinstance(state, dict) else None
        if not isinstance(counter, int):
            raise BundleError(f"revision guard {self._path} holds no counter")
        return counter

    def check(self, bundle: Bundle) -> None:
        highest = self.highest
        if bundle.counter <= highest:
            raise RollbackError(
                f"bundle revision {bundle.revision} (counter {bundle.counter}) is not newer than the applied "
                f"counter {highest}: refused as a replay or rollback"
            )

    def advance(self, bundle: Bundle) -> None:
        self.check(bundle)
        write_public(self._path, json.dumps({"counter": bundle.counter, "revision": bundle.revision}).encode())
