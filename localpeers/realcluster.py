"""A real single-node Kubernetes cluster on this machine: pods run, talk over a bridge and obey NetworkPolicies.

Issue 15 needs the chart to run on a real node, not just be stored by an API server (localpeers/kube.py). This
starts, under one folder: etcd and kube-apiserver (with the Node authorizer), kube-controller-manager,
kube-scheduler, containerd + runc from Debian with their own config, kubelet, kube-proxy (iptables mode) and
kube-router (firewall only, for NetworkPolicies). The recipe and each trap of this machine are in
/work/shared/notes/real-cluster.md; the configuration files are in localpeers/nodeconfig.py.

Traffic stays on the machine: the node's address is 198.18.255.1 on a dummy interface made here, every server
listens there or on loopback, pods live in 198.18.0.0/24 on a bridge with no default route, Services in
198.18.128.0/24, and iptables guards reject or drop what would still be routed out of the default interface.

A node changes the machine (sysctls, iptables, mounts, cgroups, links, files in /run and /var/lib), so the state
is recorded first (localpeers/hoststate.py, saved as `machine-before.json` in the folder) and restored on the way
out, also when a test fails or the process gets SIGTERM; `python -m localpeers.realcluster down --dir D` restores
it from that file even after the supervising process was killed. Root only; one cluster per machine.

    python -m localpeers.realcluster up --dir D     # returns once the node is Ready; D/kubeconfig is admin
    python -m localpeers.realcluster down --dir D
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from localpeers import hoststate, nodeconfig
from localpeers.hub import free_port
from localpeers.kube import KubeAPI, running_kube_apiserver
from localpeers.nodeconfig import BRIDGE, DUMMY, NODE_IP, NODE_NAME, POD_CIDR, RUNTIME, SERVICE_CIDR, Credentials
from localpeers.nodeimages import Image, pause_image, tools_image
from localpeers.peers import peers_cache, pinned
from localpeers.processes import running
from localpeers.tlsca import TestCA

PEERS = ("etcd", "kube-apiserver", "kubectl", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy",
         "kube-router")  # fmt: skip
#: Debian programs the node needs -> the package that has it
DEBIAN = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ipset": "ipset",
    "conntrack": "conntrack",
    "socat": "socat",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/bin/busybox": "busybox-static",
}
STATE_FILE = "machine-before.json"
_READ = ["get", "list", "watch"]
_KUBE_ROUTER_RULES: list[dict[str, object]] = [
    {"apiGroups": [""], "resources": ["namespaces", "pods", "services", "nodes", "endpoints"], "verbs": _READ},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": _READ},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
]
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PROG = "localpeers.realcluster"


class RealClusterError(RuntimeError):
    """The cluster cannot start here; the message says what to do."""


@dataclass
class RealCluster:
    """A running cluster: the admin API, its kubeconfig, the node's addresses, and the programs that run it."""

    workdir: Path
    api: KubeAPI
    kubeconfig: Path
    containerd_socket: Path
    images: dict[str, Image]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    node_name: str = NODE_NAME
    node_ip: str = NODE_IP
    pod_cidr: str = POD_CIDR
    service_cidr: str = SERVICE_CIDR

    def kubectl(
        self, *args: str, check: bool = True, timeout_s: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as the cluster admin; a failure raises with what kubectl printed (unless check=False)."""
        done = subprocess.run(
            [str(peer_path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def import_image(self, archive: Path) -> None:
        """Make a docker-archive or OCI tarball's image available to pods (`imagePullPolicy: Never`)."""
        _sh("ctr", f"--address={self.containerd_socket}", "-n", "k8s.io", "images", "import", str(archive))

    def rss_mib(self) -> dict[str, float]:
        """Resident memory per program (every process whose command line names the cluster's folder: the node's
        programs, etcd, the API server, containerd's shims summed), and of all containers together."""
        found: dict[str, float] = {}
        for pid in {*pids_mentioning(str(self.workdir)), *pids_mentioning(str(RUNTIME))}:
            try:
                program = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).name
            except OSError:
                continue
            found[program] = found.get(program, 0.0) + _rss_mib(pid)
        found["containers"] = sum(_rss_mib(pid) for pid in _cgroup_pids("kubepods"))
        return found


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text` (the cluster's own containerd socket: its shims)."""
    found = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _cgroup_pids(top: str) -> list[int]:
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup/memory", top).rglob("cgroup.procs"):
        try:
            pids.update(int(pid) for pid in procs.read_text().split())
        except OSError:
            continue
    return sorted(pids)


def peer_path(name: str) -> Path:
    _module, version, binary = pinned()[name]
    return peers_cache() / f"{name}-{version}" / binary


def missing_requirements() -> list[str]:
    """What is not installed, each with the command that installs it (empty: the cluster can start)."""
    missing = []
    peers = [name for name in PEERS if not os.access(peer_path(name), os.X_OK)]
    if peers:
        missing.append(f"peers {', '.join(peers)} are not built: run hack/install-peers {' '.join(peers)}")
    packages = sorted(
        {package for tool, package in DEBIAN.items() if not (os.path.exists(tool) or shutil.which(tool, path=_PATH))}
    )
    if packages:
        missing.append(f"Debian packages missing: run apt-get install -y {' '.join(packages)} (hack/install-deps)")
    if shutil.which("go") is None:
        missing.append("go is not on PATH (the pause image is built with it; Go 1.26 is expected here)")
    return missing


def _sh(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, env={"PATH": _PATH})
    if done.returncode != 0:
        raise RealClusterError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _default_interface() -> str:
    words = _sh("ip", "route", "show", "default").split()
    return words[words.index("dev") + 1] if "dev" in words else "eth0"


def _node_network() -> None:
    """The node's own address on a dummy interface (or a bridge without ports, where the kernel has no dummy
    driver, as this machine's), forwarding on, and the guards that keep pod traffic on
    the machine (kube-proxy does not reject ClusterIPs no Service holds; forwarding would route them out)."""
    try:
        _sh("ip", "link", "add", DUMMY, "type", "dummy")
    except RealClusterError:  # this kernel has no dummy driver: a bridge without ports is as inert a holder
        _sh("ip", "link", "add", DUMMY, "type", "bridge")
    _sh("ip", "addr", "add", f"{NODE_IP}/32", "dev", DUMMY)
    _sh("ip", "link", "set", DUMMY, "up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")  # kube-router sees bridged pod traffic
    out = _default_interface()
    # a pod's packet to a ClusterIP no Service holds (kube-proxy rewrote every held one in PREROUTING, before
    # routing): refused at once with "unreachable" (iif: only forwarded packets; the node's own are not routed
    # here, so node-to-ClusterIP still works). The FORWARD guard below is not enough: kube-router's FORWARD chain,
    # which it keeps first, accepts pod traffic before it.
    _sh("ip", "-4", "rule", "add", "pref", "100", "iif", BRIDGE, "to", SERVICE_CIDR, "unreachable")
    _sh("iptables", "-A", "FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "REJECT")
    _sh("iptables", "-A", "OUTPUT", "-d", SERVICE_CIDR, "-j", "REJECT")
    # in mangle POSTROUTING, after kube-proxy's rewrite: `-o eth0` in filter OUTPUT would break node-to-ClusterIP
    _sh("iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", out, "-s", "198.18.0.0/15", "-j", "DROP")
    _sh("iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", out, "-d", "198.18.0.0/15", "-j", "DROP")


def _wait(what: str, check: Callable[[], bool], timeout_s: float, *, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except RealClusterError:
            raise
        except Exception:  # noqa: BLE001, S110 - a probe that fails means "not yet"
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RealClusterError(f"{what} not after {timeout_s:.0f}s{':' if tail else ''}\n{tail}")
        time.sleep(0.2)


def _healthz(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, verify=False, timeout=2).status_code == 200  # noqa: S501 - self-signed, loopback

    return check


def _all_alive(processes: dict[str, subprocess.Popen[bytes]], workdir: Path) -> bool:
    """A program can fail after its health check answered (kubelet's server port taken): say which, and why."""
    for name, process in processes.items():
        if process.poll() is not None:
            tail = (workdir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RealClusterError(f"{name} exited with {process.returncode} during start-up:\n{tail}")
    return True


def _node_ready(api: KubeAPI) -> bool:
    with api.client() as client:
        node = client.get(f"/api/v1/nodes/{NODE_NAME}").json()
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    taints = [t["key"] for t in node["spec"].get("taints", [])]
    return ready and "node.kubernetes.io/not-ready" not in taints


def _delete_pods(cluster: RealCluster, before: hoststate.MachineState) -> None:
    """Delete every pod while kubelet still runs, so that it stops the sandboxes and CNI removes their
    veths and IP leases; give it 60 s (a teardown after a failure still goes on)."""
    if any(process.poll() is not None for process in cluster.processes.values()):
        return  # a signal to the whole process group (Ctrl-C, timeout) stopped them: the restore cleans up
    try:
        cluster.kubectl(
            "delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force", "--wait=false", timeout_s=20
        )
    except (RuntimeError, subprocess.TimeoutExpired):
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        if not netns - set(before.netns):
            return
        time.sleep(0.5)


def _stop_shims(socket: Path) -> None:
    """containerd's shims outlive it by design; these are the ones our containerd started (by their id)."""
    for pid in pids_mentioning(str(socket)):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _node_dummy_exists() -> bool:
    return subprocess.run(["ip", "link", "show", DUMMY], capture_output=True, check=False).returncode == 0


def restore_machine(workdir: Path) -> list[str]:
    """Put back what `machine-before.json` recorded; the problems left (empty: all restored; the file goes)."""
    state_file = workdir / STATE_FILE
    if not state_file.exists():
        return []
    _stop_shims(RUNTIME / "containerd.sock")
    problems = hoststate.restore(
        hoststate.MachineState.load(state_file), owned_links=(BRIDGE, DUMMY), owned_folder=workdir
    )
    if problems:
        (workdir / "restore-problems.txt").write_text("\n".join(problems) + "\n")
    else:
        state_file.unlink()
    return problems


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM runs the teardown (as Ctrl-C would) when nobody else handles it: pytest would just die."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def running_real_cluster(workdir: Path) -> Iterator[RealCluster]:
    """Start the whole cluster under `workdir` and return once the node is Ready; stop it and restore the
    machine on the way out (failures of the restore are raised after everything was tried)."""
    if os.geteuid() != 0:
        raise RealClusterError("a real node needs root (mounts, cgroups, iptables)")
    if missing := missing_requirements():
        raise RealClusterError("; ".join(missing))
    if _node_dummy_exists() or RUNTIME.exists():
        raise RealClusterError(
            f"another real cluster runs on this machine, or one was not cleaned up ({DUMMY} or {RUNTIME} exists):"
            f" stop it with python -m {_PROG} down --dir <its folder>"
        )
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    before = hoststate.snapshot()
    before.save(workdir / STATE_FILE)
    cluster: RealCluster | None = None
    with _sigterm_unwinds():
        try:
            with ExitStack() as stack:
                cluster = _start(workdir, stack, started)
                try:
                    yield cluster
                finally:
                    _delete_pods(cluster, before)
        finally:
            problems = restore_machine(workdir)
    if problems:
        raise RealClusterError("the machine was not fully restored:\n" + "\n".join(problems))


def _start(workdir: Path, stack: ExitStack, started: float) -> RealCluster:
    env = {**os.environ, "PATH": _PATH}
    timings: dict[str, float] = {}

    def mark(name: str) -> None:
        timings[name] = round(time.monotonic() - started, 1)

    _node_network()
    images = {"pause": pause_image(), "tools": tools_image()}
    mark("network+images")
    pki = workdir / "pki"
    ca = TestCA(pki, name="edgetrust real cluster CA")
    api = stack.enter_context(
        running_kube_apiserver(
            workdir / "apiserver",
            ca,
            address=NODE_IP,
            service_range=SERVICE_CIDR,
            serving_hosts=(nodeconfig.KUBERNETES_SERVICE_IP, "kubernetes", "kubernetes.default"),
            with_nodes=True,
            port=nodeconfig.API_SERVER_PORT,
        )
    )
    mark("kube-apiserver")
    admin = api.write_kubeconfig(workdir / "kubeconfig")
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def identity(name: str, user: str, *groups: str) -> Path:
        cert = ca.issue(name, client=True, common_name=user, organizations=groups)
        return nodeconfig.write_kubeconfig(
            workdir / f"{name}.kubeconfig", api.url, ca.ca_file, Credentials(cert.cert, cert.key)
        )

    # containerd, with the images the node needs imported before kubelet asks for the sandbox image
    folder = workdir / "containerd"
    cni_conf = workdir / "cni" / "net.d"
    cni_conf.mkdir(parents=True)
    (cni_conf / "10-edgetrust.conflist").write_text(nodeconfig.cni_conflist(workdir / "cni" / "ipam"))
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text(nodeconfig.containerd_config(folder, images["pause"].name, cni_conf, RUNTIME / "containerd.sock"))
    RUNTIME.mkdir(mode=0o700)
    socket = RUNTIME / "containerd.sock"
    ctr = ["ctr", f"--address={socket}", "-n", "k8s.io"]
    processes["containerd"] = stack.enter_context(
        running(
            ["containerd", f"--config={config}"],
            ready=lambda: subprocess.run([*ctr, "version"], capture_output=True, env=env, check=False).returncode == 0,
            log=workdir / "containerd.log",
            timeout_s=60,
            env=env,
        )
    )
    stack.callback(_stop_shims, socket)  # after kubelet stopped, before containerd (the stack unwinds in reverse)
    for image in images.values():
        _sh(*ctr, "images", "import", str(image.archive))
    mark("containerd+import")

    # kubelet
    kubelet_dir = workdir / "kubelet"
    kubelet_dir.mkdir()
    serving = ca.issue("kubelet-serving", hosts=(NODE_IP, NODE_NAME, "127.0.0.1"))
    healthz = free_port()
    (kubelet_dir / "config.json").write_text(
        nodeconfig.kubelet_config(
            kubelet_dir,
            runtime_socket=socket,
            ca_file=ca.ca_file,
            serving=Credentials(serving.cert, serving.key),
            port=nodeconfig.KUBELET_PORT,
            healthz_port=healthz,
        )
    )
    node_kubeconfig = identity("kubelet-client", f"system:node:{NODE_NAME}", "system:nodes")
    processes["kubelet"] = stack.enter_context(
        running(
            [
                str(peer_path("kubelet")),
                f"--config={kubelet_dir / 'config.json'}",
                f"--kubeconfig={node_kubeconfig}",
                f"--root-dir={RUNTIME / 'kubelet'}",
                f"--cert-dir={kubelet_dir / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
            ready=_healthz(f"http://127.0.0.1:{healthz}/healthz"),
            log=workdir / "kubelet.log",
            timeout_s=120,
            env=env,
        )
    )
    mark("kubelet")

    # the control loops: the controller manager (node lifecycle: it removes the not-ready taint; service
    # accounts; endpoints) and the scheduler
    kcm_port = free_port()
    kcm = identity("kube-controller-manager", "system:kube-controller-manager")
    processes["kube-controller-manager"] = stack.enter_context(
        running(
            [
                str(peer_path("kube-controller-manager")),
                f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={workdir / 'apiserver' / 'sa.key'}",
                f"--root-ca-file={ca.ca_file}",
                "--controllers=*,-csrsigning,-csrapproving,-nodeipam",  # no signing key on disk; no pod CIDRs
                f"--cert-dir={workdir / 'kcm-certs'}",
            ],
            ready=_healthz(f"https://127.0.0.1:{kcm_port}/healthz"),
            log=workdir / "kube-controller-manager.log",
            timeout_s=90,
            env=env,
        )
    )
    scheduler_port = free_port()
    scheduler = identity("kube-scheduler", "system:kube-scheduler")
    processes["kube-scheduler"] = stack.enter_context(
        running(
            [
                str(peer_path("kube-scheduler")),
                f"--kubeconfig={scheduler}",
                f"--authentication-kubeconfig={scheduler}",
                f"--authorization-kubeconfig={scheduler}",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                "--leader-elect=false",
                f"--cert-dir={workdir / 'scheduler-certs'}",
            ],
            ready=_healthz(f"https://127.0.0.1:{scheduler_port}/healthz"),
            log=workdir / "kube-scheduler.log",
            timeout_s=90,
            env=env,
        )
    )
    mark("controller-manager+scheduler")

    # Services (kube-proxy, iptables) and NetworkPolicies (kube-router, firewall only)
    proxy_dir = workdir / "kube-proxy"
    proxy_dir.mkdir()
    proxy_healthz = free_port()
    (proxy_dir / "config.json").write_text(
        nodeconfig.kube_proxy_config(
            identity("kube-proxy", "system:kube-proxy"), healthz_port=proxy_healthz, metrics_port=free_port()
        )
    )
    processes["kube-proxy"] = stack.enter_context(
        running(
            [str(peer_path("kube-proxy")), f"--config={proxy_dir / 'config.json'}", "--v=1"],
            ready=_healthz(f"http://127.0.0.1:{proxy_healthz}/healthz"),
            log=workdir / "kube-proxy.log",
            timeout_s=60,
            env=env,
        )
    )
    # kube-router's firewall reads pods, namespaces, nodes and NetworkPolicies cluster-wide; nothing more
    api.grant({"kind": "User", "name": "edgetrust:kube-router"}, "edgetrust:kube-router", _KUBE_ROUTER_RULES)
    router = identity("kube-router", "edgetrust:kube-router")
    processes["kube-router"] = stack.enter_context(
        running(
            [
                str(peer_path("kube-router")),
                f"--kubeconfig={router}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--hostname-override={NODE_NAME}",
                "--health-port=0",  # its health server listens on every address
                "--metrics-port=0",
                "--v=1",
            ],
            ready=lambda: "KUBE-ROUTER-FORWARD" in _sh("iptables-save", "-t", "filter"),
            log=workdir / "kube-router.log",
            timeout_s=60,
            env=env,
        )
    )
    mark("kube-proxy+kube-router")
    _wait("the node Ready and untainted", lambda: _all_alive(processes, workdir) and _node_ready(api), 120)
    mark("node Ready")
    return RealCluster(
        workdir=workdir,
        api=api,
        kubeconfig=admin,
        containerd_socket=socket,
        images=images,
        processes=processes,
        startup_s=timings,
    )


# --- the command: up / down ------------------------------------------------------------------------------------

_READY_TIMEOUT_S = 600.0
_STOP_TIMEOUT_S = 120.0


def _supervisor_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / "cluster.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return pid if _PROG.encode() in cmdline and b"_supervise" in cmdline else None


def up(directory: Path) -> int:
    """Start the supervisor in its own session; return once the node is Ready (or say why not)."""
    if (pid := _supervisor_pid(directory)) is not None:
        stop = f"python -m {_PROG} down --dir {directory}"
        print(f"{_PROG}: a cluster already runs from {directory} (pid {pid}); run: {stop}", file=sys.stderr)
        return 3
    if missing := missing_requirements():
        print(f"{_PROG}: {'; '.join(missing)}", file=sys.stderr)
        return 3
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ready = directory / "ready"
    ready.unlink(missing_ok=True)
    log = directory / "cluster.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", _PROG, "_supervise", "--dir", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not ready.exists():
        if supervisor.poll() is not None:
            print(f"{_PROG}: the cluster did not start; see {log}:\n{log.read_text()[-2000:]}", file=sys.stderr)
            return 3
        if time.monotonic() > deadline:
            supervisor.terminate()
            print(f"{_PROG}: the node was not Ready after {_READY_TIMEOUT_S:.0f}s; see {log}", file=sys.stderr)
            return 3
        time.sleep(0.2)
    print(ready.read_text().strip())
    print(f"kubeconfig: {directory / 'kubeconfig'}")
    return 0


def _supervise(directory: Path) -> int:
    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    (directory / "cluster.pid").write_text(f"{os.getpid()}\n")
    try:
        with running_real_cluster(directory) as cluster:
            summary = {"url": cluster.api.url, "startup_s": cluster.startup_s}
            (directory / "ready").write_text(json.dumps(summary) + "\n")
            print(json.dumps(summary), flush=True)
            while True:
                signal.pause()
    finally:
        (directory / "ready").unlink(missing_ok=True)
        (directory / "cluster.pid").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Running, and not a zombie (PID 1 here may not reap the children it inherits)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ancestors() -> set[int]:
    found, pid = set(), os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def _stop_leftovers(directory: Path) -> None:
    """After a supervisor was killed (SIGKILL, OOM), its programs still run: every process whose command line
    names the cluster's folder or its runtime folder is one of them (this command and its callers excepted)."""
    mine = _ancestors()
    leftovers = [pid for pid in {*pids_mentioning(str(directory)), *pids_mentioning(str(RUNTIME))} if pid not in mine]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in leftovers:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(0.2)


def down(directory: Path) -> int:
    """Stop the supervisor (it deletes the pods, stops every program and restores the machine); if it is
    gone or does not finish, restore the machine from machine-before.json here."""
    pid = _supervisor_pid(directory)
    if pid is None and not (directory / STATE_FILE).exists():
        print(f"no cluster running from {directory}")
        return 0
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    _stop_leftovers(directory)
    problems = restore_machine(directory)
    for problem in problems:
        print(f"{_PROG}: not restored: {problem}", file=sys.stderr)
    print(f"cluster stopped{f' (pid {pid})' if pid else ''}; machine {'NOT ' if problems else ''}restored")
    return 3 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=_PROG, description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("up", "start the cluster; return once the node is Ready"),
        ("down", "stop the cluster started from --dir and restore the machine"),
        ("_supervise", argparse.SUPPRESS),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--dir", type=Path, required=True, help="where the cluster keeps its files")
    args = parser.parse_args(argv)
    directory = Path(args.dir).resolve()
    handlers = {"up": up, "down": down, "_supervise": _supervise}
    return handlers[args.command](directory)


if __name__ == "__main__":
    raise SystemExit(main())
