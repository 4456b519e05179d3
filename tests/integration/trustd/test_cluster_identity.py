"""A cluster's syncer on an identity from the node agent, not from a Secret: a swtpm device enrolls with site=lab
on a real trustd; `trustctl fleet cluster add` parents the cluster's identity to the site's node alias, selected by
the chart's namespace and service accounts; the node agent (in-process, with the Kubernetes attestor on a real
kube-apiserver, the caller placed in the pod's cgroup through a stand-in proc root, as test_workload_k8s does)
serves it to the syncer's pod; the syncer's `WorkloadSvid` long-polls the hub with it across forced rotations,
every poll answered, each new connection presenting the current SVID, the previous one still valid when the
next arrived (gap 0).

Rotations are forced by moving the agent's clock past the renewal time (half the 60 s lifetime) and refreshing:
the hub issues real SVIDs, on the real clock; nothing here waits for a lifetime to pass.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.spiffe.workload import WorkloadSvid, WorkloadSvidError, socket_address
from localpeers.hub import running_hub
from localpeers.kube import running_kube_apiserver
from localpeers.nodes import enroll_node
from localpeers.svid import issue_svid_files
from localpeers.tlsca import ServerCert, TestCA
from localpeers.webhook import pod
from syncer.cli import main as syncer_main
from syncer.sources import HubSource, hub_session
from tests.integration.conftest import BootedDevice
from trustd.agent.identities import HubClient, Identities
from trustd.agent.k8s import KubeAttestor
from trustd.agent.peercred import PeerCredFront
from trustd.agent.workload_api import serve
from trustd.cli.trustctl import main as trustctl

pytestmark = pytest.mark.integration

OPERATOR = "spiffe://edge.example/operator/admin"
CLUSTER_ID = "spiffe://edge.example/cluster/edge-1"
NAMESPACE = "edgetrust-system"
ROTATIONS = 3
T = TypeVar("T")

FLEET = {
    "groups": {
        "gateways": {
            "matchLabels": {"site-class": "edge-gateway"},
            "waves": [100],
            "publishers": ["spiffe://edge.example/operator/ci"],
        }
    },
    "clusters": {"edge-1": {"labels": {"site-class": "edge-gateway", "site": "lab"}}},
}


class PeerProbe:
    """A loopback TLS server that requires a client certificate under the trust domain's roots and records the
    serial of each one presented: which SVID a new connection really shook hands with."""

    def __init__(self, server: ServerCert, roots_pem: str) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(server.cert), str(server.key))
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._context.load_verify_locations(cadata=roots_pem)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.serials: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                with self._context.wrap_socket(raw, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    self.serials.append(x509.load_der_x509_certificate(der).serial_number)
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                raw.close()

    async def presented(self, context: ssl.SSLContext) -> int:
        """The serial of the client certificate a new connection with `context` presents."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=context)
        assert await reader.read(2) == b"ok"
        writer.close()
        await writer.wait_closed()
        return self.serials[-1]

    def close(self) -> None:
        self._listener.close()
        self._thread.join(timeout=10)


class AgentThread:
    """The node agent's pieces (node.run_agent's, without its status loop) on their own event loop: the syncer's
    X509Source blocks while it waits for its first SVID, so the agent must not share the syncer's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ahead_s = 0.0  # the agent's clock, moved forward to make every SVID due
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def clock(self) -> float:
        return time.time() + self.ahead_s

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


@contextmanager
def running_agent(
    hub_url: str, svid_dir: Path, work: Path, kube: KubeAttestor
) -> Iterator[tuple[AgentThread, Identities, Path]]:
    agent = AgentThread()
    socket_path = work / "agent" / "api.sock"
    state = work / "agent-state"
    state.mkdir(mode=0o700)

    async def start() -> tuple[HubClient, Identities, PeerCredFront, Any]:
        client = HubClient(hub_url, svid_dir)
        identities = Identities(client, clock=agent.clock)
        front = PeerCredFront(socket_path, private_parent=state, proc_root=kube.proc_root)
        front.open()
        server = await serve(identities, front, kube=kube)
        await front.start()
        await identities.refresh()
        return client, identities, front, server

    async def stop(client: HubClient, front: PeerCredFront, server: Any) -> None:
        await front.close()
        await server.stop(grace=1)
        await client.close()
        await kube.close()

    try:
        client, identities, front, server = agent.call(start())
        try:
            yield agent, identities, socket_path
        finally:
            agent.call(stop(client, front, server))
    finally:
        agent.stop()


def test_the_syncer_long_polls_on_svids_from_the_node_agent_across_rotations(
    tmp_path: Path, ek_roots: Path, golden_device: BootedDevice
) -> None:
    keys = tmp_path / "publisher-keys"
    keys.mkdir()
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    (keys / "ci-1.pem").write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(FLEET))
    with (
        running_kube_apiserver(tmp_path / "kube", TestCA(tmp_path / "kube-ca")) as kube,
        running_hub(
            tmp_path / "hub",
            ek_roots=ek_roots,
            operators=(OPERATOR,),
            fleet_file=fleet_file,
            policy_keys_dir=keys,
            trust_domain="edge.example",
        ) as hub,
    ):
        with kube.client() as client:
            assert client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}).status_code == 201
            body = pod("127.0.0.1:5000/syncer:v1", name="syncer-0", labels={"app": "syncer"}, nodeName="node-1")
            body["spec"]["serviceAccountName"] = "edgetrust-syncer"
            made = client.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=body)
            assert made.status_code == 201, made.text
            uid = made.json()["metadata"]["uid"]
        node = enroll_node(
            hub.url,
            hub.ca_bundle,
            tcti=golden_device.tcti,
            event_log=golden_device.event_log,
            out_dir=tmp_path / "svid",
            node="node-1",
            site="lab",
        )
        cert, key = issue_svid_files(hub.hub.ca, OPERATOR, tmp_path / "operator")
        hub_args = ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]
        add = ["fleet", "cluster", "add", "edge-1", "--site", "lab", "--ttl", "60", *hub_args]
        assert trustctl(add) == 0
        assert trustctl(add) == 0  # idempotent: the second call keeps what the first made
        entries = [e for e in hub.hub.store.entries() if e.spiffe_id == CLUSTER_ID]
        assert sorted(e.selectors for e in entries) == [
            (f"k8s:ns:{NAMESPACE}", "k8s:sa:edgetrust-syncer"),
            (f"k8s:ns:{NAMESPACE}", "k8s:sa:edgetrust-webhook"),
        ]
        assert {e.parent_id for e in entries} == {"spiffe://edge.example/alias/site/lab"}
        assert node.spiffe_id not in {e.parent_id for e in entries}  # served through the alias, not by name

        # the stand-in for the container runtime: this process, placed in the syncer pod's cgroup
        proc = tmp_path / "proc" / str(os.getpid())
        proc.mkdir(parents=True)
        container = f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice/cri-containerd-{secrets.token_hex(8)}.scope"
        (proc / "cgroup").write_text(f"0::/kubepods.slice/kubepods-besteffort.slice/{container}\n")
        token = tmp_path / "token"
        token.write_text(kube.token)
        attestor = KubeAttestor(
            node="node-1", url=kube.url, token_file=token, ca_file=kube.ca_file, proc_root=tmp_path / "proc"
        )
        with running_agent(hub.url, tmp_path / "svid", tmp_path, attestor) as (agent, identities, socket_path):
            probe_ca = TestCA(tmp_path / "probe-ca")
            probe = PeerProbe(probe_ca.issue("probe"), hub.hub.ca.x509_authorities_pem().decode())
            try:
                asyncio.run(
                    long_polls_across_rotations(
                        hub.url, hub.ca_bundle, socket_path, agent, identities, probe, probe_ca.ca_file
                    )
                )
            finally:
                probe.close()
            # the syncer's own command line, on the Workload API (no --svid): one sync against the hub, ok
            syncer = ["run", "--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--cluster", "edge-1"]
            syncer += [
                "--group",
                "gateways",
                "--site-class",
                "edge-gateway",
                "--verification-key",
                f"ci-1={keys}/ci-1.pem",
            ]
            syncer += ["--kube-url", kube.url, "--kube-token-file", str(token), "--kube-ca-file", str(kube.ca_file)]
            syncer += ["--state-dir", str(tmp_path / "syncer"), "--spiffe-socket", str(socket_path)]
            assert syncer_main([*syncer, "--once", "--wait", "1"]) == 0


async def long_polls_across_rotations(
    hub_url: str,
    ca_bundle: Path,
    socket_path: Path,
    agent: AgentThread,
    identities: Identities,
    probe: PeerProbe,
    probe_ca: Path,
) -> None:
    address = socket_address(str(socket_path))
    with (
        WorkloadSvid(address, ca_bundle, start_timeout_s=20) as workload,
        WorkloadSvid(address, probe_ca, start_timeout_s=20) as probed,  # the same SVIDs, toward the probe
    ):
        loop = asyncio.get_running_loop()
        workload.bind(loop)
        probed.bind(loop)
        assert workload.spiffe_id == CLUSTER_ID
        rotated, probe_rotated = asyncio.Event(), asyncio.Event()
        workload.on_rotation(lambda _svid: rotated.set())
        probed.on_rotation(lambda _svid: probe_rotated.set())
        kept = hub_session(hub_url, workload.context)  # one keep-alive session across every rotation
        serials = [workload.svid.leaf.serial_number if workload.svid else 0]
        try:
            polls = 0
            for _ in range(ROTATIONS):
                await HubSource("/v1/policy/bundle", kept, wait_s=1).fetch([])  # raises on any failed poll
                polls += 1
                previous = workload.svid
                assert previous is not None
                rotated.clear()
                probe_rotated.clear()
                assert await probe.presented(probed.context) == previous.leaf.serial_number
                agent.ahead_s = 40.0  # past half the 60 s lifetime: every SVID of the node is due
                agent.call(identities.refresh())
                agent.ahead_s = 0.0
                await asyncio.wait_for(rotated.wait(), 30)
                await asyncio.wait_for(probe_rotated.wait(), 30)
                current = workload.svid
                assert current is not None
                assert current.leaf.serial_number not in serials
                # a new connection presents the SVID just loaded, not the one its context was made with
                assert await probe.presented(probed.context) == current.leaf.serial_number
                serials.append(current.leaf.serial_number)
                # gap 0: the SVID replaced was still valid when its successor was loaded
                assert previous.leaf.not_valid_after_utc.timestamp() > time.time()
                assert current.leaf.not_valid_before_utc <= previous.leaf.not_valid_after_utc
                # a new connection shakes hands with the SVID just loaded, and the hub admits it
                fresh = hub_session(hub_url, workload.context)
                try:
                    await HubSource("/v1/policy/bundle", fresh, wait_s=1).fetch([])
                    polls += 1
                finally:
                    await fresh.close()
            await HubSource("/v1/policy/bundle", kept, wait_s=1).fetch([])
            polls += 1
        finally:
            await kept.close()
        assert polls == 2 * ROTATIONS + 1
        assert workload.rotations == ROTATIONS
        # a stream that ended for good is said, not run on until the SVID expires (the syncer stops on it)
        workload.check_open()
        probed.close()
        with pytest.raises(WorkloadSvidError, match="will not be renewed"):
            probed.check_open()
