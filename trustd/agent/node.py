"""The node agent's process: identities kept fresh from the hub, the Workload API on the unix socket, and a
status file for `trustctl agent status` (how long until what the node holds expires, when the hub was last
reached), rewritten every few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from attestation.errors import AttestationError
from edgetrust._internal.files import write_private
from edgetrust._internal.retry import Backoff
from trustd.agent.enroll_client import private_out
from trustd.agent.identities import HubClient, Identities
from trustd.agent.k8s import KubeAttestor
from trustd.agent.peercred import PeerCredFront
from trustd.agent.renewal_client import renew_at, renew_node
from trustd.agent.workload_api import serve
from trustd.errors import HubUnreachableError, TrustdError

log = logging.getLogger("edgetrust.agent")
STATUS_EVERY_S = 5.0


class AgentMetrics:
    """How long what the node holds has left, and how stale the hub contact is: what an alert should watch on a
    site that has lost its link (Prometheus text on the given loopback port)."""

    def __init__(self, port: int) -> None:
        self.registry = CollectorRegistry()
        self.svid_left = Gauge(
            "edgetrust_agent_svid_seconds_left", "seconds until an SVID expires", ["spiffe_id"], registry=self.registry
        )
        self.hub_age = Gauge(
            "edgetrust_agent_hub_contact_age_seconds", "seconds since the hub last answered", registry=self.registry
        )
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def update(self, view: dict[str, Any]) -> None:
        now = time.time()
        self.svid_left.labels(view["node"]).set(view["node_svid_expires_at"] - now)
        for svid in view["svids"]:
            self.svid_left.labels(svid["spiffe_id"]).set(svid["expires_at"] - now)
        if view["last_hub_contact"] is not None:
            self.hub_age.set(now - view["last_hub_contact"])


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


async def keep_node_svid(
    hub: str, svid_dir: Path, client: HubClient, identities: Identities, *, tcti: str, event_log: Path | None
) -> None:
    """Renew the node SVID at half its lifetime with a fresh quote; on refusal, say so and retry until expiry."""
    backoff = Backoff(base_s=5.0, cap_s=300.0)
    while True:
        due = renew_at(svid_dir / "svid.pem")
        log.info("node SVID renewal due at %s", time.ctime(due))
        await asyncio.sleep(max(0.0, due - time.time()))
        try:
            log_bytes = event_log.read_bytes() if event_log is not None else None
            renewed = await asyncio.to_thread(renew_node, hub=hub, svid_dir=svid_dir, tcti=tcti, event_log=log_bytes)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the node keeps its SVID and tries again
            message = exc.diagnostics() if isinstance(exc, TrustdError | AttestationError) else repr(exc)
            identities.last_error = f"node SVID renewal: {message}"
            delay = backoff.next_delay(exc.retry_after if isinstance(exc, HubUnreachableError) else None)
            log.warning("node SVID renewal failed, retrying in %.0f s: %s", delay, message)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        await client.reload()
        log.info("node SVID renewed (serial %x), valid until %s", renewed.serial, time.ctime(renewed.not_after))


async def run_agent(
    hub: str,
    svid_dir: Path,
    socket_path: Path,
    state_dir: Path,
    *,
    entry_poll_s: float = 30.0,
    tcti: str | None = None,
    event_log: Path | None = None,
    kube: KubeAttestor | None = None,
    metrics_port: int | None = None,
) -> None:
    # what the agent keeps on disk is readable by its own uid only (the node key is 0600 in a 0700 directory)
    private_out(state_dir)
    private_out(svid_dir)
    client = HubClient(hub, svid_dir)
    identities = Identities(client, entry_poll_s=entry_poll_s)
    front = PeerCredFront(socket_path, private_parent=state_dir, proc_root=kube.proc_root if kube else None)
    front.open()
    server = None
    try:
        server = await serve(identities, front, kube=kube)
        await front.start()
    except BaseException:
        await front.close()
        if server is not None:
            await server.stop(grace=None)
        raise
    log.info("Workload API on unix://%s", socket_path)
    # SIGTERM (systemd, the kubelet) ends the agent through the clean-up below: no socket or directory is left
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    renewals = asyncio.create_task(identities.run())
    node_renewal = (
        asyncio.create_task(keep_node_svid(hub, svid_dir, client, identities, tcti=tcti, event_log=event_log))
        if tcti is not None
        else None
    )
    try:
        metrics = AgentMetrics(metrics_port) if metrics_port else None
        while True:  # at every change, and every few seconds (the hub contact time moves)
            view = status(identities, svid_dir)
            _write_status(state_dir / "status.json", view)
            if metrics is not None:
                metrics.update(view)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(identities.wait_for_change(identities.snapshot.version), STATUS_EVERY_S)
    finally:
        for task in (renewals, node_renewal):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await front.close()
        await server.stop(grace=1)
        await client.close()
        if kube is not None:
            await kube.close()


def _write_status(path: Path, body: dict[str, Any]) -> None:
    write_private(path, json.dumps(body).encode(), sync=False)
