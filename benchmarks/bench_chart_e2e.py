"""The chart on the real node, end to end: how long `helm install` takes to all pods Ready (webhook with its OPA
sidecars, the syncer; the node agent once its values exist), how long from a publish at the hub to the first packet
a NetworkPolicy refuses, and how much memory each container holds after a warm-up of admission reviews.

- install_to_ready_s: `helm upgrade --install --wait` of the chart (webhook 2 replicas + OPA, syncer), to every pod
  Ready. The node agent is installed apart (its own release and hub: its TPM's manufacturer is another trust root
  than the distribution site's hub has), after the rest: node_agent_install_to_ready_s, enrollment included.
- publish_to_enforced_s: p50 over 5 publishes of a default-deny + allow-peer revision, each after a revision that
  lifted the rules: from the publish call to the first refused packet. A loop in the `stranger` pod connects to the
  server every 0.1 s (nc -w1) and prints one line per attempt; enforced = the first of STEADY refused attempts in
  a row, which started when the line before it arrived: that arrival is the time of the first refused packet
  (within the loop's 0.1 s step).
- webhook_rss_mib (per webhook container, the max of the 2 replicas; OPA separate as opa_rss_mib),
  syncer_rss_mib: `total_rss` of memory.stat in the container's own cgroup (cgroup v1 memory controller,
  kubepods/<qos>/pod<uid>/<container id>/): anonymous resident memory, without the page cache, after WARMUP_S
  seconds of 50 AdmissionReviews/s (server-side dry-run pod creations through the API server, so every one is a
  real review through the webhook's Service). node_agent_rss_mib: the same counter, the node agent (a host swtpm
  on the node's address stands in for /dev/tpmrm0) enrolled and serving, SETTLE_S after it is Ready.

Needs root and the real node (one per machine: run under `flock /tmp/edgetrust-realcluster.lock`).
"""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers import chartrelease, nodeagent
from localpeers.chartsyncer import DistributionSite, deny_all_but, distribution_site
from localpeers.hub import running_hub
from localpeers.nodeconfig import NODE_IP
from localpeers.nodes import ek_roots_of
from localpeers.realcluster import RealCluster, peer_path, running_real_cluster
from localpeers.swtpm import SoftwareTPMFactory
from localpeers.webhook import LOOPBACK_SITE
from tests.integration.realcluster.workloads import PORT, RunningPod, client, namespace, pod, server

REPO = Path(__file__).resolve().parent.parent
PUBLISHES = 5
STEADY = 3  # refused attempts in a row that count as enforced
WARMUP_S = 20
REVIEWS_PER_S = 50
NAMESPACE = "bench-edgetrust"
WORKLOADS = "bench-workloads"  # exempt from the webhook: the tools image is no signed image
REVIEWED = "bench-reviewed"
NODE_AGENT_NAMESPACE = "bench-node-agent"
SETTLE_S = 10
GOALS = {"publish_to_enforced_s": 5.0, "webhook_rss_mib": 128.0, "syncer_rss_mib": 64.0, "node_agent_rss_mib": 64.0}


def webhook_values(site: DistributionSite, work: Path) -> dict[str, Any]:
    """The webhook with the policy library, signed by the site's publisher, trusted with its key."""
    files = build_files(
        read_repository(REPO / "policies", parameters=LOOPBACK_SITE), counter=1, commit="bench", group="gateways"
    )
    bundle = pack(sign_files(files, SigningKey(site.trusted.key_id, site.trusted.key)))
    return {
        "webhook": {
            "enabled": True,
            "policyBundleBase64": base64.b64encode(bundle).decode(),
            "bundleKeys": {site.trusted.key_id: site.trusted.public_pem.decode()},
            "exemptNamespaces": ["kube-system", WORKLOADS],
        }
    }


class Watcher:
    """The stranger pod probing the server in a loop; the host times each line as it arrives."""

    def __init__(self, cluster: RealCluster, source: RunningPod, target: RunningPod) -> None:
        loop = (
            f"while true; do if nc -w1 {target.ip} {PORT} </dev/null >/dev/null 2>&1; "
            "then echo ok; else echo no; fi; sleep 0.1; done"
        )
        argv = [str(peer_path("kubectl")), f"--kubeconfig={cluster.kubeconfig}", "exec", "-n", source.namespace]
        self.process = subprocess.Popen(
            [*argv, source.name, "--", "sh", "-c", loop], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def first_refused_after(self, since: float, timeout_s: float = 60) -> float:
        """When the refusals that last began: the start of the first attempt of a run of STEADY refused attempts
        after `since` (the arrival of the line before it), so a packet lost once mid-sync is not counted."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = [(at, text) for at, text in list(self.lines)]
            for index in range(1, len(lines) - STEADY + 1):
                run = lines[index : index + STEADY]
                if run[0][0] > since and all(text == "no" for _, text in run):
                    return max(lines[index - 1][0], since)
            time.sleep(0.05)
        raise RuntimeError(f"no steady refusal within {timeout_s} s of the publish")

    def flowing_after(self, since: float, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(at > since and text == "ok" for at, text in list(self.lines)):
                return
            time.sleep(0.05)
        raise RuntimeError("traffic did not flow again")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def publish_to_enforced(site: DistributionSite, watcher: Watcher) -> list[float]:
    lifted = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "nothing-selected", "namespace": WORKLOADS},
            "spec": {"podSelector": {"matchLabels": {"app": "none"}}, "policyTypes": ["Ingress"]},
        }
    ]
    rules = deny_all_but(WORKLOADS, server={"app": "server"}, peer={"role": "peer"})
    counter = 0
    seconds: list[float] = []
    for _ in range(PUBLISHES):
        counter += 1
        blob = site.trusted.bundle(rules, counter=counter)
        started = time.monotonic()
        answer = site.publish(blob)
        if answer.status_code != 200:
            raise RuntimeError(f"publish refused: {answer.text}")
        seconds.append(watcher.first_refused_after(started) - started)
        counter += 1
        lift = site.trusted.bundle(lifted, counter=counter)
        lifted_at = time.monotonic()
        if site.publish(lift).status_code != 200:
            raise RuntimeError("publish of the lifting revision refused")
        watcher.flowing_after(lifted_at + 0.5)
        time.sleep(1)
    return seconds


def warm_up(cluster: RealCluster) -> tuple[int, dict[int, int]]:
    """REVIEWS_PER_S server-side dry-run pod creations a second for WARMUP_S seconds; answers by status."""
    namespace(cluster, REVIEWED)
    body = pod("reviewed", REVIEWED, {"app": "reviewed"}, ["sleep", "1"])
    statuses: dict[int, int] = {}
    sent = 0
    with cluster.api.client() as api:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < WARMUP_S:
            if sent < elapsed * REVIEWS_PER_S:
                answer = api.post(f"/api/v1/namespaces/{REVIEWED}/pods", params={"dryRun": "All"}, json=body)
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                sent += 1
            else:
                time.sleep(0.002)
    return sent, statuses


def container_rss_mib(cluster: RealCluster, ns: str, selector: str) -> dict[str, float]:
    """container name -> max over the pods of the selector of the container's cgroup `total_rss`."""
    pods = json.loads(cluster.kubectl("-n", ns, "get", "pods", "-l", selector, "-o", "json").stdout)["items"]
    found: dict[str, float] = {}
    for item in pods:
        for status in item["status"]["containerStatuses"]:
            mib = nodeagent.container_rss_mib(item, status["name"])
            found[status["name"]] = max(found.get(status["name"], 0.0), mib)
    return found


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def node_agent_figures(cluster: RealCluster, images: chartrelease.ClusterImages, work: Path) -> tuple[float, float]:
    """(install to Ready in s, the agent container's RSS in MiB) of the node agent alone, with its own hub that
    trusts the swtpm's manufacturer; the release removed after."""
    factory = SoftwareTPMFactory(work / "manufacturer")
    factory.provision("first")  # makes the manufacturer's root
    roots = ek_roots_of(factory, work / "ek-roots")
    with (
        running_hub(work / "hub", ek_roots=roots, listen_host=NODE_IP, server_ip_addresses=(NODE_IP,)) as hub,
        nodeagent.node_agent_host(factory, _folder(work / "host"), name="bench-node") as host,
    ):
        ns = namespace(cluster, NODE_AGENT_NAMESPACE)
        nodeagent.trust_bundle_secret(cluster, ns, hub.ca_bundle)
        values = chartrelease.merge_values(images.helm_values(), nodeagent.node_agent_values(hub.url, host))
        started = time.monotonic()
        try:
            chartrelease.install(cluster, "na", ns, values, work=work)
            nodeagent.wait_node_agent_ready(cluster, ns, "na")
            ready_s = time.monotonic() - started
            time.sleep(SETTLE_S)
            rss = nodeagent.container_rss_mib(nodeagent.node_agent_pod(cluster, ns, "na"), "agent")
        finally:
            chartrelease.uninstall(cluster, "na", ns)
    return ready_s, rss


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-chart-e2e-") as tmp:
        work = Path(tmp)
        with running_real_cluster(work / "cluster") as cluster:
            images = chartrelease.load_images(cluster)
            with distribution_site(cluster, images, work / "site", namespace=NAMESPACE, install=False) as site:
                values = webhook_values(site, work)
                try:
                    install_s: float | None = site.install(values)
                except chartrelease.ChartReleaseError as error:  # say why, then measure what runs without it
                    print(f"the chart with the webhook did not get Ready, so no webhook figures:\n{str(error)[:3000]}")
                    site.uninstall()
                    install_s = None
                    site.install()
                ns = namespace(cluster, WORKLOADS)
                target = server(cluster, "server", ns)
                client(cluster, "peer", ns, {"role": "peer"})
                watcher = Watcher(cluster, client(cluster, "stranger", ns), target)
                try:
                    enforced = publish_to_enforced(site, watcher)
                finally:
                    watcher.stop()
                sent, statuses = warm_up(cluster) if install_s is not None else (0, {})
                webhook = container_rss_mib(cluster, NAMESPACE, "app.kubernetes.io/component=webhook")
                syncer = container_rss_mib(cluster, NAMESPACE, "app.kubernetes.io/component=syncer")
            agent_ready_s, agent_rss = node_agent_figures(cluster, images, work / "node-agent")
    p50 = statistics.median(enforced)
    results: dict[str, tuple[float, str]] = {
        "publish_to_enforced_s": (p50, "s"),
        "syncer_rss_mib": (syncer["syncer"], "MiB"),
        "node_agent_rss_mib": (agent_rss, "MiB"),
        "node_agent_install_to_ready_s": (agent_ready_s, "s"),
    }
    if install_s is not None:
        results["install_to_ready_s"] = (install_s, "s")
        results["webhook_rss_mib"] = (webhook["webhook"], "MiB")
        results["opa_rss_mib"] = (webhook["opa"], "MiB")
    print(f"publish -> first refused packet, {PUBLISHES} publishes: {', '.join(f'{s:.2f}' for s in enforced)} s")
    print(f"warm-up: {sent} AdmissionReviews in {WARMUP_S} s through the API server, answers {statuses}")
    print(f"{'metric':<24} {'value':>8} {'unit':<4} {'goal':>6}")
    for metric, (value, unit) in results.items():
        goal = GOALS.get(metric)
        print(f"{metric:<24} {value:>8.2f} {unit:<4} {'' if goal is None else f'<= {goal:g}':>6}")
    for metric, (value, unit) in results.items():
        print("RESULT " + json.dumps({"bench": "chart_e2e", "metric": metric, "value": round(value, 3), "unit": unit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
