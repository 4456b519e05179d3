"""Policy state a trustd before issue 17 kept in its data directory, moved into the store once.

Up to issue 16 each hub wrote `<data-dir>/policy/<group>/rollout.json` and `<counter>.tar.gz` for the bundles
it served; a replica now reads all of it from the store. A hub upgraded in place would otherwise forget every
rollout and answer clusters "nothing published" until the next publish, so at start each group the store does
not know yet is imported: the current and the previous bundle (what a halted or unreleased cluster is served)
and the rollout state as it was. A group the store knows already is left alone (another replica imported it,
or it was published since): the import runs on every start and changes nothing the second time. The files are
left where they are, for the operator to delete once every replica runs this version.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from trustd.errors import StoreConflictError, TrustdError
from trustd.server.policy.rollout import Rollout
from trustd.server.store import Store

log = logging.getLogger(__name__)

#: (group, blob) -> the bundle's counter once its signature and group are verified (raises a TrustdError else)
Check = Callable[[str, bytes], int]


def import_data_dir(store: Store, directory: Path, check: Check) -> list[str]:
    """Import `directory` (`<data-dir>/policy`) into `store`; returns the groups imported. Each bundle is
    verified again by `check` (files on a disk are not the publisher's word): one that fails is not imported."""
    if not directory.is_dir():
        return []
    known = set(store.rollout_versions())
    imported = []
    for path in sorted(directory.glob("*/rollout.json")):
        group = path.parent.name
        if group in known:
            continue
        try:
            _import_group(store, group, path, check)
        except StoreConflictError:  # another replica imported (or published) it meanwhile
            continue
        except (OSError, ValueError, TypeError, KeyError, TrustdError) as exc:
            log.error("policy state of group %r in %s not imported (%s): publish its bundle again", group, path, exc)
            continue
        imported.append(group)
        log.warning("policy state of group %r imported from %s into the store; the files may be deleted", group, path)
    return imported


def _import_group(store: Store, group: str, path: Path, check: Check) -> None:
    state = json.loads(path.read_text())
    rollout = Rollout.from_state(state)  # refuses (TypeError) a state that is not a rollout's
    now = time.time()
    if rollout.previous is not None:
        store.put_bundle(group, rollout.previous, _blob(path.parent, group, rollout.previous, check), now=now)
    current = _blob(path.parent, group, rollout.counter, check)
    store.publish_bundle(group, rollout.counter, current, rollout.state(), now=now)


def _blob(directory: Path, group: str, counter: int, check: Check) -> bytes:
    blob = (directory / f"{counter}.tar.gz").read_bytes()
    signed = check(group, blob)
    if signed != counter:
        raise ValueError(f"{directory / f'{counter}.tar.gz'} is signed as counter {signed}, not {counter}")
    return blob
