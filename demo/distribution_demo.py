"""The policy distribution plane on the real node: trustd serves signed bundles to a cluster group on the node's
address; the chart's syncer, a pod on the node, long-polls it over mTLS with the cluster's SVID (from the chart's
node agent, its TPM a swtpm on the node's address: `trustctl fleet cluster add`, no Secret holds it), verifies
each bundle and applies its NetworkPolicies; kube-router refuses the packets they forbid.

`main(cluster, images)` takes the node `make demo` started once for every plane (demo/__main__.py); without one it
starts its own (one per machine) and stops it at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from demo.shell import BIN, command, note, run, say
from edgetrust._internal.files import write_private
from localpeers.chartrelease import ClusterImages, fullname, load_images
from localpeers.chartsyncer import (
    CLUSTER,
    GROUP,
    PUBLISHER_ID,
    SITE,
    DistributionSite,
    deny_all_but,
    distribution_site,
)
from localpeers.nodeagent import node_agent_host
from localpeers.realcluster import RealCluster, peer_path, running_real_cluster
from localpeers.swtpm import SoftwareTPMFactory
from tests.integration.realcluster.workloads import RunningPod, client, namespace, server

NAMESPACE = "edgetrust-system"
WORKLOADS = "workloads"


@contextmanager
def _node(
    cluster: RealCluster | None, images: ClusterImages | None, root: Path
) -> Iterator[tuple[RealCluster, ClusterImages]]:
    if cluster is not None and images is not None:
        yield cluster, images
        return
    command(["python", "-m", "localpeers.realcluster", "up", "--dir", root / "node"])
    with running_real_cluster(root / "node") as started:
        yield started, load_images(started)


def main(cluster: RealCluster | None = None, images: ClusterImages | None = None) -> int:
    root = Path(".demo/distribution").resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    ok: dict[str, bool] = {}
    with ExitStack() as stack:
        node, node_images = stack.enter_context(_node(cluster, images, root))
        kubectl_bin = peer_path("kubectl")

        def kubectl(*argv: str) -> str:
            return run([kubectl_bin, f"--kubeconfig={node.kubeconfig}", *argv]).stdout

        say("== 1. trustd on the node's address 198.18.255.1 (the only address of this machine a pod reaches)")
        note("the node's TPM: a swtpm on the node's address (its EK certificate from a test manufacturer)")
        factory = SoftwareTPMFactory(root / "manufacturer")
        factory.provision("first")  # makes the manufacturer's root
        ek_roots = root / "ek-roots"
        ek_roots.mkdir()
        shutil.copy(factory.root_cert_path, ek_roots / "manufacturer-root.pem")
        shutil.copy(factory.issuer_cert_path, ek_roots / "manufacturer-intermediate.pem")
        host = stack.enter_context(node_agent_host(factory, root, name="demo-node"))
        site = stack.enter_context(
            distribution_site(
                node, node_images, root / "site", namespace=NAMESPACE, install=False, node=host, ek_roots=ek_roots
            )
        )
        hub = site.running_hub()
        note(
            f"trustd in this process, as: trustd serve --trust-domain edge.example --ip 198.18.255.1 "
            f"--fleet fleet.yaml --verification-key publisher-keys/ (cluster {CLUSTER} in group {GROUP}): {hub.url}"
        )
        say("== 2. the cluster's identity from the node agent (no Secret holds it), then the chart with the syncer on")
        command(
            ["trustctl", "fleet", "cluster", "add", CLUSTER, "--site", SITE, "--namespace", NAMESPACE,
             "--release", site.release, "--hub", hub.url, "--ca-bundle", "bundle.pem", "--svid", "operator.pem",
             "--svid-key", "operator.key"],
            suffix="   # the syncer's and the webhook's entries under spiffe://edge.example/alias/site/lab",
        )  # fmt: skip
        secret: list[str | Path] = [kubectl_bin, "-n", NAMESPACE, "create", "secret"]
        command([*secret, "generic", "edgetrust-trust-bundle", f"--from-file=bundle.pem={hub.ca_bundle}"])
        note("a hostPath PersistentVolume for the syncer's state (this node has no storage provisioner)")
        command(
            ["helm", "upgrade", "--install", site.release, "charts/edgetrust", "-n", NAMESPACE, "-f", "values.json",
             "--wait"],
            suffix="   # nodeAgent alone first (enrolls the node, site=lab), then syncer.hub, cluster, group, "
            "siteClass, verificationKeys.ci-1; webhook.enabled=false",
        )  # fmt: skip
        ready_s = site.install()
        say(f"   the syncer is Ready in {ready_s:.1f} s")
        kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide")

        say("== 3. three pods: server (answers with its name), peer and stranger; both reach the server")
        ns = namespace(node, WORKLOADS)
        pods = {
            "server": server(node, "server", ns),
            "peer": client(node, "peer", ns, {"role": "peer"}),
            "stranger": client(node, "stranger", ns),
        }

        def probe(name: str) -> bool:
            source: RunningPod = pods[name]
            argv: list[str | Path] = [
                kubectl_bin,
                f"--kubeconfig={node.kubeconfig}",
                "exec",
                "-n",
                ns,
                source.name,
                "--",
            ]
            done = run([*argv, "nc", "-w1", pods["server"].ip, "8080"])
            return done.returncode == 0 and done.stdout.strip() == "server"

        def traffic(expected: dict[str, bool], timeout_s: float = 30) -> bool:
            deadline = time.monotonic() + timeout_s
            while True:
                seen = {name: probe(name) for name in expected}
                if seen == expected or time.monotonic() > deadline:
                    return seen == expected
                note("kube-router has not caught up yet; again in a second")
                time.sleep(1)

        ok["before: both reach the server"] = traffic({"peer": True, "stranger": True})

        say("== 4. the publisher builds revision 1 (default-deny + allow from role=peer), signs it and publishes it")
        key = root / "ci-1.key"
        write_private(key, site.trusted.private_pem())
        note(f"the publisher's ES256 key in {key} (0600), its public half given to the chart as verificationKeys.ci-1")
        publisher = root / "publisher"
        data_dir = hub.hub.settings.data_dir
        mint: list[str | Path] = [
            BIN / "trustd",
            "svid",
            "mint",
            "--data-dir",
            data_dir,
            "--trust-domain",
            "edge.example",
        ]
        run([*mint, "--spiffe-id", PUBLISHER_ID, "--ttl", "1h", "--out", publisher])
        hub_args = ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle)]
        hub_args += ["--svid", str(publisher / "svid.pem"), "--svid-key", str(publisher / "svid.key")]

        def build_and_publish(counter: int, policies: list[dict[str, Any]]) -> bool:
            repo = site.trusted.repository(f"demo-{counter}", policies)
            bundle = root / f"v{counter}.tar.gz"
            build = ["build", str(repo), "--out", str(bundle), "--counter", str(counter), "--commit", f"demo{counter}"]
            run([BIN / "trustctl", "policy", *build, "--key", str(key), "--key-id", "ci-1", "--group", GROUP])
            return (
                run([BIN / "trustctl", "policy", "publish", str(bundle), "--group", GROUP, *hub_args]).returncode == 0
            )

        published = build_and_publish(1, deny_all_but(WORKLOADS, server={"app": "server"}, peer={"role": "peer"}))
        applied = _reported(site, 1)
        kubectl("-n", WORKLOADS, "get", "networkpolicies")
        syncer = f"deploy/{fullname(site.release)}-syncer"
        kubectl("-n", NAMESPACE, "exec", syncer, "--", "edgetrust-syncer", "status")
        ok["revision 1 applied by the syncer pod"] = published and applied
        ok["after: only the peer gets through"] = traffic({"peer": True, "stranger": False})

        say("== 5. revision 2 drops the two rules; the syncer prunes them and traffic flows again")
        lifted: list[dict[str, Any]] = [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "nothing-selected", "namespace": WORKLOADS},
                "spec": {"podSelector": {"matchLabels": {"app": "none"}}, "policyTypes": ["Ingress"]},
            }
        ]
        ok["revision 2 applied"] = build_and_publish(2, lifted) and _reported(site, 2)
        kubectl("-n", WORKLOADS, "get", "networkpolicies")
        ok["traffic flows again"] = traffic({"peer": True, "stranger": True})

        say("== 6. a replay of revision 1 is refused by the hub; the rollout as the hub sees it")
        replay = run([BIN / "trustctl", "policy", "publish", str(root / "v1.tar.gz"), "--group", GROUP, *hub_args])
        ok["replay refused"] = replay.returncode != 0
        run([BIN / "trustctl", "policy", "rollout", "status", GROUP, *hub_args])
    say("== Summary")
    for title, passed in ok.items():
        say(f"   {'ok  ' if passed else 'FAIL'} {title}")
    return 0 if all(ok.values()) else 1


def _reported(site: DistributionSite, counter: int) -> bool:
    """Wait for the syncer's report at the hub that revision `counter` is in force; say what it reported."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = site.hub_report()
        if report.get("revision", "").startswith(f"{counter:012d}") and report.get("result") in (
            "applied",
            "unchanged",
        ):
            say(f"   the syncer reported to the hub: {report['result']} {report['revision']}")
            return True
        time.sleep(0.2)
    say(f"   the syncer did not report revision {counter}: {site.hub_report()}")
    return False


if __name__ == "__main__":
    sys.exit(main())
