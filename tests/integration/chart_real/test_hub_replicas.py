"""The hub as three replicas on the real node (issue 17): the chart's Deployment with `hub.replicas=3`, its store
a real PostgreSQL (URL and CA from a Secret), its keys on a real PKCS#11 token, and no state volume.

The token is SoftHSM2, the stand-in for a network HSM: its module (the host's Debian library, ABI-compatible
with the image, which is Debian 12 too) and its token folder are hostPath volumes given through
`hub.pkcs11.volumes`, so nothing of SoftHSM2 ships in the image; its configuration is a ConfigMap. PostgreSQL
listens on the node's own address, which pods reach, and admits the pod network only (and the host).

One install. helm runs the pre-install Job (`trustd ca init --if-absent` on the token, which this test leaves
empty), then waits for three Ready replicas. Each is asked directly (its pod IP, TLS checked against the root
read from the token, under the Service's name) for the trust bundle and the cluster's policy bundle. Then one
pod is deleted while a cluster reads at every replica and a publisher publishes the next revision; the
Deployment brings a fresh pod (a new emptyDir) that serves the same root and that revision from the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from localpeers import chartrelease
from localpeers.chartrelease import ClusterImages
from localpeers.chartsyncer import POD_UID, Publisher, deny_all_but
from localpeers.nodeconfig import NODE_IP
from localpeers.postgres import PostgresServer, running_postgres
from localpeers.realcluster import RealCluster
from localpeers.softhsm import MODULE, SoftHSMError, SoftToken, make_token
from localpeers.tlsca import TestCA

pytestmark = pytest.mark.integration

NAMESPACE, RELEASE = "et-hub-ha", "ha"
TRUST_DOMAIN = "edge.example"
GROUP, CLUSTER, SITE_CLASS = "gateways", "edge-node", "edge-gateway"
PUBLISHER_ID = f"spiffe://{TRUST_DOMAIN}/publisher/ci"
CLUSTER_ID = f"spiffe://{TRUST_DOMAIN}/cluster/{CLUSTER}"
REPLICAS = 3
HUB = chartrelease.fullname(RELEASE) + "-hub"
HUB_NAME = f"{HUB}.{NAMESPACE}.svc"  # a name of the hub's serving certificate
PORT = 8443
# where the pods find the token: the module at the path the chart is given, its folder and its configuration
POD_MODULE = str(MODULE)
POD_TOKENS = "/var/lib/softhsm/tokens"
POD_CONF_DIR = "/etc/softhsm"
POD_STORE_CA = "/etc/edgetrust/store/ca.crt"
TRUSTD = str(Path(sys.executable).parent / "trustd")


@dataclass
class HubSite:
    cluster: RealCluster
    work: Path
    postgres: PostgresServer
    database: str
    token: SoftToken
    publisher: Publisher
    published: dict[str, int] = field(default_factory=dict)  # sha256 of a published blob -> its counter

    def trustd(self, *argv: str, check: bool = True) -> str:
        """trustd on the host, on the pods' token and store (as an operator runs it on the hub machine; the store
        URL, which holds a password, only ever from the environment)."""
        flags = [
            f"--data-dir={self.work / 'operator-data'}",
            f"--trust-domain={TRUST_DOMAIN}",
            f"--pkcs11-module={self.token.module}",
            f"--pkcs11-token={self.token.label}",
            f"--pkcs11-pin-file={self.token.pin_file}",
        ]
        env = {**os.environ, **self.token.environ(), "TRUSTD_STORE_URL": self.url}
        done = subprocess.run([TRUSTD, *argv, *flags], capture_output=True, text=True, env=env, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"trustd {' '.join(argv)} failed: {done.stdout}{done.stderr}")
        return done.stdout if done.returncode == 0 else f"exit {done.returncode}: {done.stderr}"

    def mint(self, spiffe_id: str, name: str) -> tuple[Path, Path, Path]:
        """`trustd svid mint` with the token's CA, recorded in the pods' store: (svid.pem, svid.key, bundle.pem)."""
        out = self.work / name
        self.trustd("svid", "mint", f"--spiffe-id={spiffe_id}", "--ttl=1h", f"--out={out}")
        return out / "svid.pem", out / "svid.key", out / "bundle.pem"

    @property
    def url(self) -> str:
        return self.postgres.url(self.database)

    def pods(self) -> list[dict[str, Any]]:
        """The hub's live pods (not being deleted)."""
        found = json.loads(
            self.cluster.kubectl(
                "-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=hub", "-o", "json"
            ).stdout
        )
        return [p for p in found["items"] if p["metadata"].get("deletionTimestamp") is None]

    def ready_pods(self) -> dict[str, str]:
        """name -> pod IP of the hub pods that are Ready."""
        ready = {}
        for pod in self.pods():
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conditions.get("Ready") == "True" and pod["status"].get("podIP"):
                ready[pod["metadata"]["name"]] = pod["status"]["podIP"]
        return ready

    def wait_ready(self, count: int, *, without: str = "", timeout_s: float = 180) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            ready = self.ready_pods()
            if len(ready) == count and without not in ready:
                return ready
            if time.monotonic() > deadline:
                pods = self.cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False).stdout
                raise AssertionError(f"not {count} ready hub pods (without {without!r}): {ready}\n{pods}")
            time.sleep(0.5)

    def client(self, cert: tuple[Path, Path] | None = None) -> httpx.Client:
        """A client that trusts the root on the token only and checks the Service's name on every replica."""
        context = ssl.create_default_context(cafile=str(self.work / "root.pem"))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return httpx.Client(verify=context, timeout=10)


def get(client: httpx.Client, ip: str, path: str) -> httpx.Response:
    """GET `path` at one replica's pod IP, TLS checked against the Service's name (the SNI too)."""
    return client.get(f"https://{ip}:{PORT}{path}", extensions={"sni_hostname": HUB_NAME})


def _token_for_pods(directory: Path) -> SoftToken:
    """An empty token (nothing is made on it here: the chart's Job does it), owned by the pods' user, and the
    configuration the pods read (the token folder at its pod path)."""
    try:
        token = make_token(directory)
    except SoftHSMError as error:
        pytest.fail(str(error), pytrace=False)
    (directory / "pod-softhsm2.conf").write_text(
        f"directories.tokendir = {POD_TOKENS}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    for path in (directory, *directory.rglob("*")):
        os.chown(path, POD_UID, POD_UID)
    return token


def _values(site: HubSite, images: ClusterImages) -> dict[str, Any]:
    fleet = {
        "groups": {GROUP: {"matchLabels": {"site-class": SITE_CLASS}, "publishers": [PUBLISHER_ID]}},
        "clusters": {CLUSTER: {"labels": {"site-class": SITE_CLASS}}},
        "operators": [f"spiffe://{TRUST_DOMAIN}/operator/admin"],
    }
    ek_root = TestCA(site.work / "ek-ca").ca_file.read_text()  # enrollment is not exercised here
    host_module = str(MODULE.resolve())  # a hostPath of the library itself, not of Debian's symlink to it
    tokens = site.token.conf.parent / "tokens"
    return chartrelease.merge_values(
        images.helm_values(),
        {
            "webhook": {"enabled": False},
            "syncer": {"enabled": False},
            "hub": {
                "enabled": True,
                "trustDomain": TRUST_DOMAIN,
                "replicas": REPLICAS,
                "storeSecret": "trustd-store",
                "fleet": yaml.safe_dump(fleet),
                "policyKeys": {site.publisher.key_id: site.publisher.public_pem.decode()},
                "ekRoots": {"lab": ek_root},
                "referenceValues": yaml.safe_dump(
                    {"device_classes": {"edge-gateway": {"pcr_bank": "sha256", "pcrs": {0: ["00" * 32]}}}}
                ),
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                "pkcs11": {
                    "module": POD_MODULE,
                    "tokenLabel": site.token.label,
                    "pinSecret": "hub-pin",
                    "env": [{"name": "SOFTHSM2_CONF", "value": f"{POD_CONF_DIR}/softhsm2.conf"}],
                    "volumes": [
                        {"name": "hsm-module", "hostPath": {"path": host_module, "type": "File"}},
                        {"name": "hsm-tokens", "hostPath": {"path": str(tokens), "type": "Directory"}},
                        {"name": "hsm-config", "configMap": {"name": "softhsm"}},
                    ],
                    "volumeMounts": [
                        {"name": "hsm-module", "mountPath": POD_MODULE, "readOnly": True},
                        {"name": "hsm-tokens", "mountPath": POD_TOKENS},
                        {"name": "hsm-config", "mountPath": POD_CONF_DIR, "readOnly": True},
                    ],
                },
            },
        },
    )


def _secrets(site: HubSite) -> None:
    """What the operator creates before the install: the store's URL and CA, the PIN, SoftHSM2's configuration."""
    kubectl = site.cluster.kubectl
    kubectl("create", "namespace", NAMESPACE)
    pod_url = site.postgres.url(site.database, ca_file=POD_STORE_CA)
    (site.work / "store-url").write_text(pod_url)
    kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", "trustd-store",
        f"--from-file=url={site.work / 'store-url'}", f"--from-file=ca.crt={site.postgres.ca_file}",
    )  # fmt: skip
    kubectl("-n", NAMESPACE, "create", "secret", "generic", "hub-pin", f"--from-file=pin={site.token.pin_file}")
    conf = site.token.conf.parent / "pod-softhsm2.conf"
    kubectl("-n", NAMESPACE, "create", "configmap", "softhsm", f"--from-file=softhsm2.conf={conf}")


@pytest.fixture(scope="module")
def site(
    real_cluster: RealCluster, cluster_images: ClusterImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubSite]:
    work = tmp_path_factory.mktemp("hub-ha")
    with running_postgres(TestCA(work / "pg-ca"), host=NODE_IP, clients=(real_cluster.pod_cidr,)) as postgres:
        found = HubSite(
            real_cluster,
            work,
            postgres,
            postgres.new_database_name(),
            _token_for_pods(work / "softhsm"),
            Publisher("ci-1", work),
        )
        try:
            assert "trustd ca init" in found.trustd("ca", "status", check=False)  # an empty token: nothing to load
            _secrets(found)
            seconds = chartrelease.install(real_cluster, RELEASE, NAMESPACE, _values(found, cluster_images), work=work)
            print(f"\ninstall_to_ready_s (trust-init Job + {REPLICAS} hub replicas): {seconds:.1f}", flush=True)
            yield found
        finally:
            chartrelease.uninstall(real_cluster, RELEASE, NAMESPACE)


def test_the_job_made_one_root_on_the_token_and_three_replicas_without_state_serve_it(site: HubSite) -> None:
    events = site.cluster.kubectl("-n", NAMESPACE, "get", "events", "-o", "json").stdout
    job_events = [
        e["reason"]
        for e in json.loads(events)["items"]
        if e["involvedObject"]["kind"] == "Job" and e["involvedObject"]["name"] == f"{HUB}-trust-init"
    ]
    assert "Completed" in job_events, job_events  # the pre-install hook ran to the end (then helm deleted it)
    # the token was empty before the install (the fixture checked): what is on it now, the Job made
    assert site.trustd("ca", "status").startswith("signing CA: serial "), site.trustd("ca", "status")
    (site.work / "root.pem").write_text(site.trustd("bundle", "--pem"))

    ready = site.wait_ready(REPLICAS)
    deployment = json.loads(site.cluster.kubectl("-n", NAMESPACE, "get", "deployment", HUB, "-o", "json").stdout)
    assert deployment["status"]["readyReplicas"] == REPLICAS
    statefulsets = json.loads(site.cluster.kubectl("-n", NAMESPACE, "get", "statefulsets,pvc", "-o", "json").stdout)
    assert statefulsets["items"] == []
    for pod in site.pods():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["data"] == {"name": "data", "emptyDir": {}}, volumes["data"]
        assert not [v for v in volumes.values() if "persistentVolumeClaim" in v], volumes
        host_paths = {name for name, v in volumes.items() if "hostPath" in v}
        assert host_paths == {"hsm-module", "hsm-tokens"}, host_paths  # the token only (an HSM in production)
        (trustd,) = pod["spec"]["containers"]
        assert not [e for e in trustd.get("env", []) if "PIN" in e["name"]]

    root = (site.work / "root.pem").read_text()
    with site.client() as client:
        pems = {name: get(client, ip, "/v1/bundle.pem") for name, ip in ready.items()}
        jwks = {name: get(client, ip, "/v1/bundle") for name, ip in ready.items()}
    assert {r.status_code for r in (*pems.values(), *jwks.values())} == {200}
    assert {r.text for r in pems.values()} == {root}, pems  # one root, the token's, at every replica
    assert len({r.content for r in jwks.values()}) == 1  # one SPIFFE bundle (its JWT key is the token's too)


def _publish(site: HubSite, client: httpx.Client, ip: str, counter: int) -> httpx.Response:
    policies = deny_all_but("shop", server={"app": "api"}, peer={"app": f"web-{counter}"})
    blob = site.publisher.bundle(policies, counter=counter, group=GROUP)
    site.published[hashlib.sha256(blob).hexdigest()] = counter
    response = client.post(
        f"https://{ip}:{PORT}/v1/policy/bundles/{GROUP}", content=blob, extensions={"sni_hostname": HUB_NAME}
    )
    return response


def _served_counter(site: HubSite, response: httpx.Response) -> int:
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return site.published[hashlib.sha256(response.content).hexdigest()]  # a blob nobody published fails here


class Reader(threading.Thread):
    """The cluster reading its policy bundle at every Ready replica in turn, until stopped: what each answered."""

    def __init__(self, site: HubSite, cert: tuple[Path, Path]) -> None:
        super().__init__(daemon=True)
        self.site, self.cert = site, cert
        self.stop = threading.Event()
        self.seen: list[tuple[str, int]] = []  # (pod, counter) in the order read
        self.failures: list[str] = []

    def run(self) -> None:
        with self.site.client(self.cert) as client:
            while not self.stop.is_set():
                for name, ip in self.site.ready_pods().items():
                    try:
                        self.seen.append((name, _served_counter(self.site, get(client, ip, "/v1/policy/bundle"))))
                    except (httpx.TransportError, AssertionError, KeyError) as error:
                        self.failures.append(f"{name}: {error!r}")


def test_a_replica_deleted_while_a_cluster_reads_and_a_publisher_publishes_leaves_the_state_intact(
    site: HubSite,
) -> None:
    publisher = site.mint(PUBLISHER_ID, "publisher")
    cluster = site.mint(CLUSTER_ID, "cluster")
    before = site.wait_ready(REPLICAS)
    first, victim, other = sorted(before)
    with site.client(publisher[:2]) as client:
        published = _publish(site, client, before[first], 1)
        assert published.status_code == 200, published.text
    with site.client(cluster[:2]) as client:
        deadline = time.monotonic() + 10  # a publish at one replica reaches the others through NOTIFY
        while {_served_counter(site, get(client, ip, "/v1/policy/bundle")) for ip in before.values()} != {1}:
            assert time.monotonic() < deadline, "revision 1 did not reach every replica"
            time.sleep(0.2)

    reader = Reader(site, cluster[:2])
    reader.start()
    try:
        time.sleep(1)
        site.cluster.kubectl("-n", NAMESPACE, "delete", "pod", victim, "--grace-period=0", "--force", "--wait=false")
        with site.client(publisher[:2]) as client:
            published = _publish(site, client, before[other], 2)  # while the Deployment replaces the victim
        assert published.status_code == 200, published.text
        after = site.wait_ready(REPLICAS, without=victim)
        (fresh,) = set(after) - set(before)
        deadline = time.monotonic() + 15
        while not {n for n, c in reader.seen if c == 2} >= set(after):
            assert time.monotonic() < deadline, f"not every replica served revision 2: {reader.seen[-12:]}"
            time.sleep(0.2)
    finally:
        reader.stop.set()
        reader.join(timeout=30)

    print(
        f"\nreads during the replacement: {len(reader.seen)} answered, {len(reader.failures)} failed "
        f"(at {sorted({f.split(':')[0] for f in reader.failures})}); the fresh pod answered "
        f"{reader.seen.count((fresh, 2))} times",
        flush=True,
    )
    # no replica ever went back a revision, the fresh one (an empty emptyDir) included
    for name in {n for n, _ in reader.seen}:
        served = [c for n, c in reader.seen if n == name]
        assert served == sorted(served), (name, served)
    assert [c for n, c in reader.seen if n == fresh][-1] == 2
    assert len(reader.seen) > 20, reader.seen
    # failures only at the deleted pod, while it went away (kubectl's Ready view lags its end)
    assert all(f.startswith(f"{victim}:") for f in reader.failures), reader.failures
    root = (site.work / "root.pem").read_text()
    with site.client(publisher[:2]) as client:
        for name, ip in after.items():
            assert get(client, ip, "/v1/bundle.pem").text == root, name
            rollout = get(client, ip, f"/v1/policy/rollouts/{GROUP}")
            assert rollout.status_code == 200, (name, rollout.text)
            assert rollout.json()["counter"] == 2, (name, rollout.json())
        assert _publish(site, client, after[fresh], 2).status_code == 409  # the store still refuses a stale one
    deployment = json.loads(site.cluster.kubectl("-n", NAMESPACE, "get", "deployment", HUB, "-o", "json").stdout)
    assert deployment["status"]["readyReplicas"] == REPLICAS
