"""The configuration files of the real cluster's node programs (localpeers/realcluster.py), as data.

Each setting here answers a trap of this machine, written down in /work/shared/notes/real-cluster.md: cgroup v1
with cgroupfs (`failCgroupV1: false`), no CAP_SYS_RESOURCE (containerd's `restrict_oom_score_adj`), no registry
(a local sandbox image), every server on loopback or the node's own dummy address, no sysctl that kube-proxy
would change, and pods on a bridge with routes to the node and the Service range only (no default route, no
masquerade), so that no pod packet can leave the machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "edgetrust-node"
NODE_IP = "198.18.255.1"
POD_CIDR = "198.18.0.0/24"
POD_GATEWAY = "198.18.0.1"
SERVICE_CIDR = "198.18.128.0/24"
KUBERNETES_SERVICE_IP = "198.18.128.1"
#: the node address's two servers: fixed ports below the ephemeral range (32768-60999), because a free port
#: on loopback may be the source port of a client's connection from the node's address (kubelet then failed
#: with "bind: address already in use"); one cluster per machine, so fixed ports cannot collide with another
API_SERVER_PORT = 6443
KUBELET_PORT = 10250
BRIDGE = "etbr0"
DUMMY = "etnode0"
#: kubelet's root folder and containerd's sockets: a unix socket path has at most 107 bytes, which a test's
#: temporary folder can exceed (kubelet then fails with "bind: invalid argument"); one cluster per machine, so a
#: fixed folder, removed at teardown (localpeers/hoststate.py lists it)
RUNTIME = Path("/run/edgetrust-node")


@dataclass(frozen=True)
class Credentials:
    """A client certificate and its key, as a kubeconfig names them."""

    cert: Path
    key: Path


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: Credentials) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "real", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "user", "user": {"client-certificate": str(user.cert), "client-key": str(user.key)}}],
        "contexts": [{"name": "real", "context": {"cluster": "real", "user": "user"}}],
        "current-context": "real",
    }
    path.write_text(json.dumps(config, indent=1))
    path.chmod(0o600)
    return path


def containerd_config(folder: Path, sandbox_image: str, cni_conf_dir: Path, socket: Path) -> str:
    """containerd 1.6 (Debian) kept inside `folder`: root, state, socket, runc's root and the opt plugin's
    folder (else /var/lib/containerd, /run/containerd, /run/containerd/runc and /opt/containerd)."""
    return f"""version = 2
root = "{folder / "root"}"
state = "{folder / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{folder / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # no CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj, and fails every sandbox unless told not to
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{folder / "runc"}"
"""


def cni_conflist(ipam_dir: Path) -> str:
    """Bridge CNI: the gateway on the bridge, no default route and no masquerade; routes to the Service range
    and the node's address only (a pod's `nc 1.1.1.1 53` fails at once with "Network is unreachable")."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "edgetrust",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,  # a pod reaching itself through its Service
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                        "routes": [{"dst": SERVICE_CIDR}, {"dst": f"{NODE_IP}/32"}],
                        "dataDir": str(ipam_dir),
                    },
                }
            ],
        },
        indent=1,
    )


def kubelet_config(
    folder: Path, *, runtime_socket: Path, ca_file: Path, serving: Credentials, port: int, healthz_port: int
) -> str:
    resolv = folder / "resolv.conf"
    resolv.write_text("")  # no DNS server for pods: no cluster DNS, and never the machine's own resolvers
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine has cgroup v1 only; 1.37 still runs on it when told so
            "cgroupDriver": "cgroupfs",  # no systemd
            "containerRuntimeEndpoint": f"unix://{runtime_socket}",
            "failSwapOn": False,
            "podLogsDir": str(folder / "pod-logs"),
            "volumePluginDir": str(folder / "volume-plugins"),
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [],
            "resolvConf": str(resolv),
            "address": NODE_IP,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "maxPods": 30,
            "shutdownGracePeriod": "0s",
            "nodeStatusUpdateFrequency": "5s",
            # the disk is shared with the build caches; the cluster must not evict pods or delete its images
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        },
        indent=1,
    )


def kube_proxy_config(kubeconfig: Path, *, healthz_port: int, metrics_port: int) -> str:
    """iptables mode with no sysctl changed: the defaults would raise two conntrack timeouts, size the
    conntrack table and set route_localnet (for localhost NodePorts)."""
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            "clusterCIDR": POD_CIDR,
            "detectLocalMode": "ClusterCIDR",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "oomScoreAdj": 0,
            "iptables": {"localhostNodePorts": False},
        },
        indent=1,
    )
