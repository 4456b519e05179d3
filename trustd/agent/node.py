"""The node agent's process: identities kept fresh from the hub, the Workload API on the unix socket, and a
status file for `trustctl agent status` (how long until what the node holds expires, when the hub was last
reached), rewritten every few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from trustd.agent.identities import HubClient, Identities
from trustd.agent.peercred import PeerCredFront
from trustd.agent.workload_api import serve

log = logging.getLogger("edgetrust.agent")
STATUS_EVERY_S = 5.0


def status(identities: Identities, svid_dir: Path) -> dict[str, Any]:
    node = x509.load_pem_x509_certificates((svid_dir / "svid.pem").read_bytes())[0]
    uris = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    now = time.time()
    snapshot = identities.snapshot
    return {
        "node": uris.get_values_for_type(x509.UniformResourceIdentifier)[0],
        "node_svid_expires_at": node.not_valid_after_utc.timestamp(),
        "written_at": now,
        "last_hub_contact": identities.last_contact,
        "last_error": identities.last_error,
        "svids": [
            {"spiffe_id": s.entry.spiffe_id, "selectors": sorted(s.entry.selectors), "expires_at": s.not_after}
            for s in snapshot.issued.values()
        ],
    }


async def run_agent(
    hub: str, svid_dir: Path, socket_path: Path, state_dir: Path, *, entry_poll_s: float = 30.0
) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    client = HubClient(hub, svid_dir)
    identities = Identities(client, entry_poll_s=entry_poll_s)
    front = PeerCredFront(socket_path)
    server, port = await serve(identities, front)
    await front.start(port)
    log.info("Workload API on unix://%s", socket_path)
    renewals = asyncio.create_task(identities.run())
    try:
        while True:  # at every change, and every few seconds (the hub contact time moves)
            _write_status(state_dir / "status.json", status(identities, svid_dir))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(identities.wait_for_change(identities.snapshot.version), STATUS_EVERY_S)
    finally:
        renewals.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewals
        await front.close()
        await server.stop(grace=1)
        await client.close()


def _write_status(path: Path, body: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(body))
    os.replace(temporary, path)
