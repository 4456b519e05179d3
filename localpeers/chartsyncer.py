"""The distribution plane on the real cluster: a hub on the node's address, the chart's syncer installed for
real, and a publisher that signs and publishes NetworkPolicy bundles, for tests, benchmarks and the demo.

The hub (trustd, in this process) listens on the node address 198.18.255.1 with that IP in its certificate, the
only address of this machine a pod reaches; its fleet file names the cluster (`edge-node`, group `gateways`, site
class `edge-gateway`). The cluster's identity, as the chart's README says:
- with a node TPM (`node_tpm`: a swtpm on the node's address, localpeers/nodeagent.py): the hub also enrolls
  nodes; `trustctl fleet cluster add` gives it the syncer's and the webhook's entries under the node's site
  alias, the release is installed first with the node agent alone (Ready, holding those entries), then upgraded
  with the syncer on: the syncer takes its X.509-SVID from the agent's Workload API, and no Secret holds one;
- without one, the fallback: the SVID issued by the hub's CA (as `trustd svid mint` does) into the Secret
  `syncer.svidFallbackSecret` names (nothing renews it).
The hub's roots go into the trust-bundle Secret; the webhook is off (the admission plane is installed apart)
unless the caller's values turn it on.

Persistence: the chart's default (a PersistentVolumeClaim) is kept, since the rollback guard and the last known
good bundle must survive a pod restart. The node has no StorageClass or provisioner, so `install()` first makes
a hostPath PersistentVolume bound to the chart's claim (claimRef), in a folder owned by the pod's user (a
hostPath volume gets no fsGroup); a cluster with a provisioner needs none of this.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers import chartrelease
from localpeers.chartrelease import ChartReleaseError, ClusterImages
from localpeers.hub import RunningHub, running_policy_hub
from localpeers.nodeagent import NodeAgentHost, node_agent_values, wait_node_agent_ready
from localpeers.realcluster import RealCluster
from localpeers.svid import issue_svid_files
from trustd.cli.trustctl import main as trustctl

CLUSTER = "edge-node"
GROUP = "gateways"
SITE_CLASS = "edge-gateway"
PUBLISHER_ID = "spiffe://edge.example/operator/ci"
CLUSTER_ID = f"spiffe://edge.example/cluster/{CLUSTER}"
#: the fleet's operator (`trustctl fleet cluster add`)
OPERATOR_ID = "spiffe://edge.example/operator/admin"
#: the node's `site` claim (the chart's nodeAgent.site) and the cluster's site in `fleet cluster add`
SITE = "lab"
#: the Secret of the fallback identity (no node agent)
FALLBACK_SECRET = "edgetrust-cluster-svid"
#: the pod user of the chart's podSecurity (and the image's): the hostPath state folder is made theirs
POD_UID = 65532


class Publisher:
    """A publisher's ES256 key and the bundles it signs: NetworkPolicies for the cluster's site class."""

    def __init__(self, key_id: str, work: Path) -> None:
        self.key_id = key_id
        self.work = work
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        """The signing key as PKCS#8 PEM, for `trustctl policy build --key` (write it 0600)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def repository(self, name: str, policies: list[dict[str, Any]], admission: Path | None = None) -> Path:
        """A policy repository holding these NetworkPolicies (networkpolicies/<site class>/) and, given a folder
        of admission policies, those (admission/: what a webhook that follows the syncer swaps in)."""
        repo = self.work / "repos" / name
        if repo.exists():
            shutil.rmtree(repo)
        folder = repo / "networkpolicies" / SITE_CLASS
        folder.mkdir(parents=True)
        for policy in policies:
            (folder / f"{policy['metadata']['name']}.yaml").write_text(json.dumps(policy, indent=2))
        if admission is not None:
            shutil.copytree(admission, repo / "admission")
        return repo

    def bundle(
        self, policies: list[dict[str, Any]], *, counter: int, group: str = GROUP, admission: Path | None = None
    ) -> bytes:
        """The signed bundle of revision `counter` (as `trustctl policy build --key` makes it)."""
        repo = self.repository(f"r{counter}-{self.key_id}", policies, admission)
        files = build_files(read_repository(repo), counter=counter, commit=f"c{counter:04d}", group=group)
        return pack(sign_files(files, SigningKey(self.key_id, self.key)))


def deny_all_but(namespace: str, *, server: dict[str, str], peer: dict[str, str]) -> list[dict[str, Any]]:
    """Default-deny ingress in `namespace`, plus one rule: pods labelled `peer` may reach pods labelled `server`."""
    meta = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"}
    return [
        {
            **meta,
            "metadata": {"name": "default-deny", "namespace": namespace},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
        {
            **meta,
            "metadata": {"name": "allow-peer", "namespace": namespace},
            "spec": {
                "podSelector": {"matchLabels": server},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": peer}}]}],
            },
        },
    ]


@dataclass
class DistributionSite:
    """The hub, its publishers and the syncer release in `namespace` of the real cluster."""

    cluster: RealCluster
    images: ClusterImages
    work: Path
    namespace: str
    release: str
    trusted: Publisher
    #: keys the hub accepts beyond the syncer's (an attacker's key planted on the hub, in the security tests)
    hub_only: list[Publisher] = field(default_factory=list)
    hub: RunningHub | None = None
    hub_port: int = 0
    #: the node's TPM and host folders: the node agent gives the cluster its identity (else the Secret fallback)
    node: NodeAgentHost | None = None
    #: the swtpm manufacturer's roots the hub trusts, with `node`
    ek_roots: Path | None = None
    #: the cluster SVID's lifetime in its entries (`fleet cluster add --ttl`), with `node`
    svid_ttl_s: int = 3600
    _hub_stack: ExitStack = field(default_factory=ExitStack)

    # --- the hub ------------------------------------------------------------------------------------------

    @property
    def hub_dir(self) -> Path:
        return self.work / "hub"

    def start_hub(self) -> RunningHub:
        fleet: dict[str, object] = {
            "groups": {GROUP: {"matchLabels": {"site-class": SITE_CLASS}, "publishers": [PUBLISHER_ID]}},
            "clusters": {CLUSTER: {"labels": {"site-class": SITE_CLASS}}},
            "operators": [OPERATOR_ID],
        }
        keys = {p.key_id: p.public_pem for p in (self.trusted, *self.hub_only)}
        self._hub_stack = ExitStack()
        self.hub = self._hub_stack.enter_context(
            running_policy_hub(
                self.hub_dir,
                fleet=fleet,
                publisher_keys=keys,
                listen_host=self.cluster.node_ip,
                listen_port=self.hub_port,
                ek_roots=self.ek_roots if self.node is not None else None,
            )
        )
        self.hub_port = urlsplit(self.hub.url).port or 0  # a restart keeps the URL the syncer was installed with
        return self.hub

    def stop_hub(self) -> None:
        self.hub = None
        self._hub_stack.close()

    def running_hub(self) -> RunningHub:
        if self.hub is None:
            raise ChartReleaseError("the hub is not running")
        return self.hub

    def backup_policy_state(self, name: str) -> Path:
        """A copy of the hub's policy state (rollouts and bundles), as an operator's backup would hold it."""
        backup = self.work / "backups" / f"{name}.db"
        backup.parent.mkdir(parents=True, exist_ok=True)
        # the hub's policy state is in its store (issue 17): an online copy of the SQLite file (consistent
        # while the hub writes, WAL included)
        with sqlite3.connect(self._hub_db) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        return backup

    def restore_policy_state(self, backup: Path) -> None:
        """The hub restarted from an old backup of its policy state (same CA, same address): it now serves
        an older revision than the cluster holds."""
        self.stop_hub()
        with sqlite3.connect(self._hub_db) as db:  # only the policy tables: devices and revocations stay current
            db.execute("ATTACH DATABASE ? AS backup", (str(backup),))
            for table in ("rollouts", "policy_bundles"):
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - the two table names above
                db.execute(f"INSERT INTO {table} SELECT * FROM backup.{table}")  # noqa: S608
        self.start_hub()

    @property
    def _hub_db(self) -> Path:
        return self.hub_dir / "hub" / "hub" / "trustd.db"

    def publish(self, blob: bytes) -> httpx.Response:
        """POST the bundle to the group as the publisher does (`trustctl policy publish`: mTLS with its SVID)."""
        hub = self.running_hub()
        cert, key = issue_svid_files(hub.hub.ca, PUBLISHER_ID, self.work / "publisher")
        context = ssl.create_default_context(cafile=str(hub.ca_bundle))
        context.load_cert_chain(str(cert), str(key))
        with httpx.Client(base_url=hub.url, verify=context, timeout=30) as client:
            return client.post(f"/v1/policy/bundles/{GROUP}", content=blob)

    def hub_report(self) -> dict[str, Any]:
        """What the cluster's syncer last reported to the hub (revision, result, error), or {}."""
        policy = self.running_hub().hub.policy
        assert policy is not None
        return dict(policy.status.get(CLUSTER, {}))

    # --- the syncer release -------------------------------------------------------------------------------

    def node_agent_values(self) -> dict[str, Any]:
        """The node agent's values on this site's node (empty without one: the fallback Secret instead)."""
        if self.node is None:
            return {}
        return {"nodeAgent": node_agent_values(self.running_hub().url, self.node, site=SITE)["nodeAgent"]}

    def values(self) -> dict[str, Any]:
        hub = self.running_hub()
        identity = {} if self.node is not None else {"svidFallbackSecret": FALLBACK_SECRET}
        return chartrelease.merge_values(
            self.images.helm_values(),
            self.node_agent_values(),
            {
                "webhook": {"enabled": False},
                "syncer": {
                    **identity,
                    "enabled": True,
                    "hub": hub.url,
                    "cluster": CLUSTER,
                    "group": GROUP,
                    "siteClass": SITE_CLASS,
                    "waitSeconds": 20,
                    "verificationKeys": {self.trusted.key_id: self.trusted.public_pem.decode()},
                },
            },
        )

    def secrets(self) -> None:
        """The hub's roots (bundle.pem) and, without a node agent only, the fallback SVID Secret, as NOTES.txt says."""
        hub = self.running_hub()
        self.cluster.kubectl("create", "namespace", self.namespace, check=False)
        kubectl = ("-n", self.namespace, "create", "secret")
        if self.node is None:
            cert, key = issue_svid_files(hub.hub.ca, CLUSTER_ID, self.work / "cluster-svid")
            self.cluster.kubectl(*kubectl, "tls", FALLBACK_SECRET, f"--cert={cert}", f"--key={key}")
        self.cluster.kubectl(*kubectl, "generic", "edgetrust-trust-bundle", f"--from-file=bundle.pem={hub.ca_bundle}")

    def operator_argv(self) -> list[str]:
        """trustctl's hub options as the fleet's operator (an SVID issued by the hub's CA)."""
        hub = self.running_hub()
        cert, key = issue_svid_files(hub.hub.ca, OPERATOR_ID, self.work / "operator")
        return ["--hub", hub.url, "--ca-bundle", str(hub.ca_bundle), "--svid", str(cert), "--svid-key", str(key)]

    def cluster_add(self) -> None:
        """`trustctl fleet cluster add`: the syncer's and the webhook's entries, under the node's site alias."""
        argv = ["fleet", "cluster", "add", CLUSTER, "--site", SITE, "--namespace", self.namespace]
        argv += ["--release", self.release, "--ttl", str(self.svid_ttl_s), *self.operator_argv()]
        if trustctl(argv) != 0:
            raise ChartReleaseError(f"trustctl fleet cluster add {CLUSTER} failed")

    @property
    def claim(self) -> str:
        return f"{chartrelease.fullname(self.release)}-syncer-state"

    def state_volume(self) -> None:
        """A hostPath PersistentVolume for the chart's claim (this node has no provisioner: see the module)."""
        folder = self.work / "syncer-state"
        folder.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(folder, POD_UID, POD_UID)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{self.namespace}-{self.claim}"},
            "spec": {
                "capacity": {"storage": "64Mi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": self.namespace, "name": self.claim},
                "hostPath": {"path": str(folder), "type": "Directory"},
            },
        }
        self.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(volume))

    def install(self, extra: dict[str, Any] | None = None) -> float:
        """Secrets, the state volume, then `helm upgrade --install`; the seconds to every pod Ready. With a node
        agent: the entries first (`fleet cluster add`), then the release with the node agent alone until it is
        Ready, so the syncer's first Workload API call finds its SVID (not counted in the seconds returned)."""
        self.secrets()
        self.state_volume()
        if self.node is not None:
            self.cluster_add()
            agent_only = chartrelease.merge_values(
                self.images.helm_values(),
                self.node_agent_values(),
                {"webhook": {"enabled": False}, "syncer": {"enabled": False}},
            )
            chartrelease.install(self.cluster, self.release, self.namespace, agent_only, work=self.work / "helm")
            wait_node_agent_ready(self.cluster, self.namespace, self.release)
        values = chartrelease.merge_values(self.values(), extra or {})
        return chartrelease.install(self.cluster, self.release, self.namespace, values, work=self.work / "helm")

    def uninstall(self) -> None:
        chartrelease.uninstall(self.cluster, self.release, self.namespace)
        self.cluster.kubectl("delete", "pv", f"{self.namespace}-{self.claim}", "--ignore-not-found", check=False)

    def syncer_pod(self) -> dict[str, Any]:
        """The syncer's live Pod object, as the API server holds it."""
        found = json.loads(
            self.cluster.kubectl(
                "-n", self.namespace, "get", "pods", "-l", "app.kubernetes.io/component=syncer", "-o", "json"
            ).stdout
        )
        pods = [p for p in found["items"] if p["metadata"].get("deletionTimestamp") is None]
        if len(pods) != 1:
            raise ChartReleaseError(f"expected one syncer pod in {self.namespace}, found {len(pods)}")
        pod: dict[str, Any] = pods[0]
        return pod

    def syncer_exec(self, *argv: str, check: bool = False) -> str:
        pod = self.syncer_pod()["metadata"]["name"]
        done = self.cluster.kubectl("-n", self.namespace, "exec", pod, "-c", "syncer", "--", *argv, check=check)
        return done.stdout

    def syncer_status(self) -> dict[str, Any]:
        """`edgetrust-syncer status --json` in the syncer pod: its last sync, from its state volume."""
        text = self.syncer_exec("edgetrust-syncer", "status", "--state-dir", "/var/lib/edgetrust/syncer", "--json")
        status: dict[str, Any] = json.loads(text) if text.strip() else {}
        return status

    def syncer_log(self) -> str:
        return self.cluster.kubectl(
            "-n", self.namespace, "logs", "deploy/" + f"{chartrelease.fullname(self.release)}-syncer", check=False
        ).stdout

    def network_policies(self, namespace: str) -> dict[str, str]:
        """name -> resourceVersion of the NetworkPolicies in `namespace`."""
        found = json.loads(self.cluster.kubectl("-n", namespace, "get", "networkpolicies", "-o", "json").stdout)
        return {item["metadata"]["name"]: item["metadata"]["resourceVersion"] for item in found["items"]}

    def wait_report(self, check: Callable[[dict[str, Any]], bool], *, timeout_s: float = 60) -> dict[str, Any]:
        """The hub's report of the syncer once `check` holds for it (the syncer's log on timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            report = self.hub_report()
            if check(report):
                return report
            if time.monotonic() > deadline:
                raise ChartReleaseError(f"the syncer never reported as expected: {report}\n{self.syncer_log()[-3000:]}")
            time.sleep(0.2)


@contextmanager
def distribution_site(
    cluster: RealCluster,
    images: ClusterImages,
    work: Path,
    *,
    namespace: str,
    release: str = "et",
    hub_only_keys: tuple[str, ...] = (),
    install: bool = True,
    node: NodeAgentHost | None = None,
    ek_roots: Path | None = None,
    svid_ttl_s: int = 3600,
) -> Iterator[DistributionSite]:
    """The hub on the node's address and (with `install`) the syncer release; everything removed at the end,
    also when the body fails. With `node` (and the `ek_roots` its TPM's EK chains to) the node agent gives the
    cluster its identity; without, the fallback Secret."""
    if node is not None and ek_roots is None:
        raise ChartReleaseError("a node agent needs the EK roots its TPM chains to (ek_roots)")
    work.mkdir(parents=True, exist_ok=True)
    site = DistributionSite(
        cluster,
        images,
        work,
        namespace,
        release,
        trusted=Publisher("ci-1", work),
        hub_only=[Publisher(name, work) for name in hub_only_keys],
        node=node,
        ek_roots=ek_roots,
        svid_ttl_s=svid_ttl_s,
    )
    try:
        site.start_hub()
        if install:
            site.install()
        yield site
    finally:
        try:
            site.uninstall()
        finally:
            site.stop_hub()
