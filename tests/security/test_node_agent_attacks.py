"""Attacks by an unprivileged local user (uid 65534) on the node agent, to take another workload's SVID.

The agent (`trustctl agent run`, a real process, enrolled with a swtpm against a real trustd) serves a victim
workload (uid 0) that holds a stream open, and an entry for nobody itself. The attacker, running as uid
65534, tries every path the agent exposes: every TCP port the agent listens on, from 127.0.0.1 and 127.0.0.2,
with every source port it sees connected to them in /proc/net/tcp (the relay's, under the old design); every
unix socket the agent holds; every file and directory the agent keeps; the metrics page. Only its own SVID,
through the public socket, may come back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from spiffe import WorkloadApiClient

from localpeers.hub import free_port, running_hub
from localpeers.nodes import create_entry, enroll_node, operator_args
from localpeers.processes import running
from tests.integration.conftest import BootedDevice
from tests.integration.trustd.test_workload_api import TRUSTCTL, serving
from tests.support.unprivileged import NOBODY, run_as_nobody

pytestmark = pytest.mark.integration

OPERATOR = "spiffe://edge.example/operator/admin"
VICTIM = "spiffe://edge.example/workload/payments"
OWN = "spiffe://edge.example/workload/nobody"

#: what uid 65534 runs: stdlib, grpc and py-spiffe's messages; no project code
ATTACKER = r'''
import json, os, socket, sys, tempfile, threading, urllib.request
import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

job = json.load(sys.stdin)
HEADER = (("workload.spiffe.io", "true"),)
results = []


def fetch(target, label):
    """X.509- and JWT-SVIDs through a gRPC target: what came back, or how it was refused."""
    got = {"path": label, "x509": None, "jwt": None, "keys": 0, "refused": []}
    with grpc.insecure_channel(target) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        try:
            answer = next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=3)))
            got["x509"] = [s.spiffe_id for s in answer.svids]
            got["keys"] = sum(1 for s in answer.svids if s.x509_svid_key)
        except grpc.RpcError as exc:
            got["refused"].append(f"x509: {exc.code()} {exc.details()}")
        for wanted in ("", job["victim"]):
            try:
                request = workload_pb2.JWTSVIDRequest(audience=["spiffe://edge.example/api"], spiffe_id=wanted)
                answer = stub.FetchJWTSVID(request, metadata=HEADER, timeout=3)
                got["jwt"] = (got["jwt"] or []) + [s.spiffe_id for s in answer.svids]
            except grpc.RpcError as exc:
                got["refused"].append(f"jwt {wanted!r}: {exc.code()} {exc.details()}")
    results.append(got)


def through(address, source, label):
    """gRPC over a TCP connection from `source` (address, port): a relay in this process binds it."""
    private = tempfile.mkdtemp()
    path = os.path.join(private, "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    stop = threading.Event()

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket()
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                upstream.bind(source)
                upstream.connect(address)
            except OSError as exc:
                results.append({"path": label, "connect": f"{type(exc).__name__}: {exc}"})
                client.close()
                continue
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        fetch(f"unix:{path}", label)
    finally:
        stop.set()
        listener.close()


def connected_ports(port):
    """Local ports of connections to 127.0.0.1:port, as any user reads them in /proc/net/tcp."""
    found = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(remote.split(":")[1], 16) == port:
                found.add(int(local.split(":")[1], 16))
    return sorted(found)


for port in job["tcp_ports"]:
    fetch(f"127.0.0.1:{port}", f"tcp 127.0.0.1:{port}")
    for spoofed in connected_ports(port):
        for source in ("127.0.0.2", "127.0.0.3"):
            through(("127.0.0.1", port), (source, spoofed), f"tcp 127.0.0.1:{port} from {source}:{spoofed}")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read()
        results.append({"path": f"http 127.0.0.1:{port}", "pem": b"-----BEGIN" in body, "read": len(body)})
    except Exception as exc:  # not HTTP (a gRPC port): nothing read
        results.append({"path": f"http 127.0.0.1:{port}", "error": repr(exc)})

for path in job["unix_sockets"]:
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError as exc:
        results.append({"path": f"unix {path}", "connect": f"{type(exc).__name__}: {exc}"})
        continue
    finally:
        probe.close()
    fetch(f"unix:{path}", f"unix {path}")

for path in job["files"]:
    try:
        if os.path.isdir(path):
            results.append({"path": path, "listed": os.listdir(path)})
        else:
            with open(path, "rb") as f:
                body = f.read()
            results.append({"path": path, "read": len(body), "private_key": b"PRIVATE KEY" in body})
    except OSError as exc:
        results.append({"path": path, "error": f"{type(exc).__name__}: {exc}"})

print(json.dumps(results))
'''


@pytest.fixture
def node_root() -> Iterator[Path]:
    """A node's directories where any user can look (pytest's tmp_path is 0700 to everyone but root)."""
    root = Path(tempfile.mkdtemp(prefix="et-node-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _agent_sockets(pid: int) -> tuple[set[int], set[str]]:
    """The TCP ports the agent listens on, and the paths of its unix sockets (as root sees them)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[6] in inodes and len(fields) > 7:
            paths.add(fields[7].lstrip("@"))
    return ports, paths


def _everything_under(*roots: Path) -> list[str]:
    found: list[str] = []
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            found.append(directory)
            found += [os.path.join(directory, name) for name in (*subdirs, *files)]
    return sorted(set(found))


def test_spoofed_relay_port_from_other_loopback_address_gets_no_svid(
    tmp_path: Path, ek_roots: Path, golden_device: BootedDevice, node_root: Path
) -> None:
    with running_hub(tmp_path / "hub", ek_roots=ek_roots, operators=(OPERATOR,)) as hub:
        svid_dir, state_dir, socket_path = node_root / "svid", node_root / "state", node_root / "run" / "api.sock"
        node = enroll_node(
            hub.url, hub.ca_bundle, tcti=golden_device.tcti, event_log=golden_device.event_log, out_dir=svid_dir
        ).spiffe_id
        hub_args = operator_args(hub.url, hub.ca_bundle, hub.hub.ca, tmp_path / "operator")
        create_entry(hub_args, VICTIM, node, "unix:uid:0")
        create_entry(hub_args, OWN, node, f"unix:uid:{NOBODY}")
        entries_before = sorted((e.id, e.spiffe_id) for e in hub.hub.store.entries())
        metrics_port = free_port()
        argv = [TRUSTCTL, "agent", "run", "--hub", hub.url, "--svid-dir", str(svid_dir), "--socket", str(socket_path)]
        argv += ["--state-dir", str(state_dir), "--entry-poll", "1", "--metrics-port", str(metrics_port)]
        with running(argv, ready=lambda: serving(socket_path, VICTIM), log=tmp_path / "agent.log") as agent:
            # the victim holds a stream open: a relay connection exists while the attacker looks
            victim = WorkloadApiClient(f"unix://{socket_path}", default_timeout=5)
            streaming = threading.Event()
            stream = victim.stream_x509_contexts(on_success=lambda _: streaming.set(), on_error=lambda _: None)
            try:
                assert streaming.wait(10)
                tcp_ports, unix_sockets = _agent_sockets(agent.pid)
                # no loopback gRPC port at all: the only TCP port is the metrics page
                assert tcp_ports == {metrics_port}
                assert str(socket_path) in unix_sockets  # and the private one, and the relay's connections
                agent_files = _everything_under(svid_dir, state_dir, socket_path.parent)
                # and the agent process itself: its memory, environment and open files
                process_files = [f"/proc/{agent.pid}/{name}" for name in ("mem", "environ", "fd", "map_files")]
                # the private gRPC socket lives in a 0700 directory of the state directory
                assert any(p.endswith("/grpc.sock") and p.startswith(str(state_dir)) for p in agent_files)
                job = {
                    "victim": VICTIM,
                    "tcp_ports": sorted(tcp_ports),
                    "unix_sockets": sorted(unix_sockets),
                    "files": [*agent_files, *process_files],
                }
                results = run_as_nobody(ATTACKER, job)
            finally:
                stream.cancel()
                victim.close()

            by_path = {r["path"]: r for r in results}
            # the public socket gives nobody its own identity, and only that
            public = by_path[f"unix {socket_path}"]
            assert public["x509"] == [OWN], public
            assert public["keys"] == 1, public
            assert public["jwt"] is None or VICTIM not in public["jwt"]
            assert public["jwt"] == [OWN] or any("no identity issued" in r for r in public["refused"])
            # no other path yields any SVID, and nothing anywhere carries the victim's
            for result in results:
                assert VICTIM not in (result.get("x509") or []) + (result.get("jwt") or []), result
                if result["path"] != public["path"]:
                    assert not result.get("x509"), result
                    assert not result.get("jwt"), result
                assert not result.get("private_key"), result
                assert not result.get("pem"), result  # the metrics page names SPIFFE IDs, carries no credential
            # the private socket is refused by the kernel (its directory is the agent's, 0700)
            private = [p for p in unix_sockets if p != str(socket_path) and p.endswith("/grpc.sock")]
            assert private
            assert all("PermissionError" in by_path[f"unix {p}"]["connect"] for p in private)
            # what the agent keeps on disk cannot even be listed, let alone read
            for kept in (svid_dir, state_dir):
                assert "PermissionError" in by_path[str(kept)]["error"]
            for found in agent_files:
                if found.startswith((f"{svid_dir}/", f"{state_dir}/")):
                    assert "PermissionError" in by_path[found]["error"], by_path[found]
            assert (svid_dir / "svid.key").stat().st_mode & 0o777 == 0o600
            for found in process_files:
                assert "PermissionError" in by_path[found]["error"], by_path[found]

            # nothing lost or changed: the victim still gets its own SVID, the hub's entries are as they were
            assert serving(socket_path, VICTIM)
        assert sorted((e.id, e.spiffe_id) for e in hub.hub.store.entries()) == entries_before
