"""The policy distribution plane on the real node, and the three planes as one: trustd serves signed bundles to a
cluster group on the node's address; the chart's node agent enrolls the node with its TPM (a swtpm on the node's
address) and serves the cluster's workloads their SVIDs (`trustctl fleet cluster add`, no Secret holds one); the
syncer long-polls the hub over mTLS on that SVID, verifies each bundle, applies its NetworkPolicies (kube-router
refuses the packets they forbid) and hands the bundle to the webhook, which swaps its admission policies in
without a restart; a revoked node gets no new pods (the webhook refuses their binding).

`main(cluster, images)` takes the node `make demo` started once for every plane (demo/__main__.py); without one it
starts its own (one per machine) and stops it at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from demo.shell import BIN, command, note, run, say
from edgetrust._internal.files import write_private
from localpeers.chartrelease import ClusterImages, fullname, helm, load_images
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
from localpeers.nodeimages import TOOLS_IMAGE
from localpeers.nodes import ek_roots_of
from localpeers.realcluster import RealCluster, peer_path, running_real_cluster
from localpeers.swtpm import SoftwareTPMFactory
from tests.integration.realcluster.workloads import RunningPod, client, namespace, pod, server

NAMESPACE = "edgetrust-system"
#: a webhook replica's /readyz, asked in its own container (what it enforces, what node attestation it holds)
READYZ = (
    "import ssl, urllib.request; "
    "print(urllib.request.urlopen('https://127.0.0.1:8443/readyz', context=ssl._create_unverified_context())"
    ".read().decode())"
)
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
        ek_roots = ek_roots_of(factory, root / "ek-roots")
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
        ready_s = site.install(
            {
                "webhook": {"enabled": True, "replicas": 1},  # nodeAttestation auto: on with the whole plane
                "syncer": {"revocationKey": hub.hub.revocations.public_key_pem.decode()},
            }
        )
        say(f"   the syncer and the webhook are Ready in {ready_s:.1f} s, both on SVIDs from the node agent:")
        kubectl("-n", NAMESPACE, "get", "secrets")
        note("no Secret above holds an SVID or a key: the hub's roots and the webhook's serving certificate only")
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

        say(
            "== 4. the publisher builds revision 1 (default-deny + allow from role=peer; admission: require_labels "
            "warns), signs it and publishes it"
        )
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

        def build_and_publish(counter: int, policies: list[dict[str, Any]], admission: str) -> bool:
            repo = site.trusted.repository(f"demo-{counter}", policies, require_labels(root / f"a{counter}", admission))
            bundle = root / f"v{counter}.tar.gz"
            build = ["build", str(repo), "--out", str(bundle), "--counter", str(counter), "--commit", f"demo{counter}"]
            run([BIN / "trustctl", "policy", *build, "--key", str(key), "--key-id", "ci-1", "--group", GROUP])
            return (
                run([BIN / "trustctl", "policy", "publish", str(bundle), "--group", GROUP, *hub_args]).returncode == 0
            )

        published = build_and_publish(
            1, deny_all_but(WORKLOADS, server={"app": "server"}, peer={"role": "peer"}), "warn"
        )
        applied = _reported(site, 1)
        kubectl("-n", WORKLOADS, "get", "networkpolicies")
        syncer = f"deploy/{fullname(site.release)}-syncer"
        kubectl("-n", NAMESPACE, "exec", syncer, "--", "edgetrust-syncer", "status")
        ok["revision 1 applied by the syncer pod"] = published and applied
        ok["after: only the peer gets through"] = traffic({"peer": True, "stranger": False})
        ok["the webhook enforces revision 1 (no helm upgrade)"] = _enforcing(node, 1)
        admitted, said = _submit(node, "visitor")
        say(f"   a pod without app.kubernetes.io/name: {'admitted' if admitted else 'REFUSED'} ({said})")
        ok["revision 1 admits a pod without the label (warns)"] = admitted
        history = _helm_revisions(site)

        say(
            "== 5. revision 2 drops the two rules and turns require_labels to enforce: the syncer prunes the rules, "
            "traffic flows again, and the webhook refuses the pod it admitted before"
        )
        lifted: list[dict[str, Any]] = [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "nothing-selected", "namespace": WORKLOADS},
                "spec": {"podSelector": {"matchLabels": {"app": "none"}}, "policyTypes": ["Ingress"]},
            }
        ]
        published_at = time.monotonic()
        ok["revision 2 applied"] = build_and_publish(2, lifted, "enforce") and _reported(site, 2)
        refused_s = _refused_within(node, "visitor", published_at, 30)
        if refused_s is not None:
            say(f"   the same pod is refused {refused_s:.1f} s after the publish began: {_submit(node, 'visitor')[1]}")
        ok["the webhook refuses the pod it admitted before, within seconds"] = refused_s is not None
        ok["no helm upgrade, no restart"] = _helm_revisions(site) == history and _restarts(node) == 0
        kubectl("-n", WORKLOADS, "get", "networkpolicies")
        ok["traffic flows again"] = traffic({"peer": True, "stranger": True})

        say("== 6. a replay of revision 1 is refused by the hub; the rollout as the hub sees it")
        replay = run([BIN / "trustctl", "policy", "publish", str(root / "v1.tar.gz"), "--group", GROUP, *hub_args])
        ok["replay refused"] = replay.returncode != 0
        run([BIN / "trustctl", "policy", "rollout", "status", GROUP, *hub_args])

        say("== 7. the node is revoked at the hub: a new pod stays Pending, the webhook refusing its binding")
        operator = site.operator_argv()
        revoked = run([BIN / "trustctl", "fleet", "revoke", node.node_name, "--reason", "demo: node stolen", *operator])
        ok["node revoked"] = revoked.returncode == 0
        counter = hub.hub.revocations.current().counter
        ok["the webhook holds the revocation"] = _wait(lambda: _held_revocations(node) >= counter, 60)
        kubectl("-n", WORKLOADS, "run", "late", f"--image={TOOLS_IMAGE}", "--image-pull-policy=Never",
                "--labels=app.kubernetes.io/name=late", "--", "sleep", "3600")  # fmt: skip
        failures: list[str] = []

        def refused_binding() -> bool:
            found = _scheduling_failures(node, "late")
            failures[:] = [m for m in found if f"node '{node.node_name}'" in m and "revoked" in m]
            return bool(failures)

        ok["the new pod stays Pending with the webhook's reason"] = _wait(refused_binding, 60)
        for message in failures[:1]:
            say(f"   FailedScheduling: {message}")
        kubectl("-n", WORKLOADS, "get", "pod", "late", "-o", "wide")
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


def require_labels(folder: Path, mode: str) -> Path:
    """The bundle's admission policies: the library's require_labels (app.kubernetes.io/name) in `mode`."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(Path("policies/admission/require_labels"), folder / "require_labels")
    meta = folder / "require_labels" / "policy.yaml"
    meta.write_text(meta.read_text().replace("mode: warn", f"mode: {mode}"))
    return folder


def _submit(node: RealCluster, name: str) -> tuple[bool, str]:
    """A pod without app.kubernetes.io/name, submitted as a server-side dry run (every webhook is called, nothing
    runs): (admitted, what kubectl said)."""
    manifest = pod(name, WORKLOADS, {"app": name}, ["sleep", "3600"])
    done = node.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", stdin=json.dumps(manifest), check=False)
    said = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, (said[-1] if said else "")[-240:]


def _refused_within(node: RealCluster, name: str, since: float, timeout_s: float) -> float | None:
    """Seconds from `since` until the webhook refuses the pod `name`, or None."""
    while time.monotonic() - since < timeout_s:
        if not _submit(node, name)[0]:
            return time.monotonic() - since
        time.sleep(0.5)
    return None


def _wait(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _readyz(node: RealCluster) -> list[dict[str, Any]]:
    """Each webhook replica's /readyz, asked in its own container (loopback)."""
    found = json.loads(
        node.kubectl("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=webhook", "-o", "json").stdout
    )
    answers: list[dict[str, Any]] = []
    for replica in found["items"]:
        if replica["metadata"].get("deletionTimestamp"):
            continue
        done = node.kubectl(
            "-n", NAMESPACE, "exec", replica["metadata"]["name"], "-c", "webhook", "--", "python3.11", "-c", READYZ,
            check=False, timeout_s=30,
        )  # fmt: skip
        answers.append(json.loads(done.stdout) if done.returncode == 0 else {})
    return answers


def _enforcing(node: RealCluster, counter: int) -> bool:
    """Every webhook replica enforces the bundle of revision `counter` (its /readyz), within 30 s."""
    ok = _wait(lambda: all(r.get("counter") == counter for r in _readyz(node)), 30)
    say(f"   the webhook replicas enforce revision counters {[r.get('counter') for r in _readyz(node)]}")
    return ok


def _held_revocations(node: RealCluster) -> int:
    held = [(r.get("node_attestation") or {}).get("revocations", -1) for r in _readyz(node)]
    return min((h for h in held if isinstance(h, int)), default=-1)


def _helm_revisions(site: DistributionSite) -> int:
    done = helm("history", site.release, "-n", NAMESPACE, "-o", "json", kubeconfig=site.cluster.kubeconfig)
    return len(json.loads(done.stdout))


def _restarts(node: RealCluster) -> int:
    found = json.loads(node.kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout)
    return sum(c.get("restartCount", 0) for p in found["items"] for c in p["status"].get("containerStatuses", []))


def _scheduling_failures(node: RealCluster, name: str) -> list[str]:
    events = json.loads(
        node.kubectl(
            "-n", WORKLOADS, "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
    )
    return [e.get("message", "") for e in events["items"] if e.get("reason") == "FailedScheduling"]


if __name__ == "__main__":
    sys.exit(main())
