"""Attacks on policy distribution, each performed against the real components: trustd over mTLS, the real
`edgetrust-syncer` process, a real kube-apiserver, the real distribution registry as a hostile mirror, and a
hostile TLS server on loopback that sends more than it declares.

The fleet has two groups: `stores` (site-a, published by ci-stores) and `gateways` (site-b, published by
ci-gateways). Both publishers' keys are trusted by the hub and by site-b's syncer, as in a real fleet where one
policy pipeline signs for every group: a signature alone says nothing about which group a bundle is for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import MANIFEST, ROOT, build_files, pack, read_repository
from edgetrust.bundles.oci import OCIReference, push_bundle, registry_settings
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.hub import RunningHub, free_port, running_policy_hub
from localpeers.kube import KubeAPI, running_kube_apiserver
from localpeers.registry import Registry, running_registry
from localpeers.svid import issue_svid_files
from localpeers.tlsca import TestCA
from localpeers.webhook import write_site_parameters

pytestmark = pytest.mark.integration

REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
NETWORK_POLICIES = "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies"
STORES_CI = "spiffe://edge.example/operator/ci-stores"
GATEWAYS_CI = "spiffe://edge.example/operator/ci-gateways"
FLEET: dict[str, object] = {
    "groups": {
        "stores": {"matchLabels": {"site-class": "edge-store"}, "publishers": [STORES_CI]},
        "gateways": {"matchLabels": {"site-class": "edge-gateway"}, "publishers": [GATEWAYS_CI]},
    },
    "clusters": {
        "site-a": {"labels": {"site-class": "edge-store"}},
        "site-b": {"labels": {"site-class": "edge-gateway"}},
    },
}
GENUINE = {"default-deny", "allow-dns", "allow-hub"}  # what site-b's site class holds in the policy repository
MAX_SYNCER_RSS_KIB = 100 * 1024
HOSTILE_BYTES = 300 * 1024 * 1024


# --- the components ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    """site-b's API server, shared by this module's tests (each starts from no NetworkPolicy at all)."""
    ca = TestCA(tmp_path_factory.mktemp("kube-ca"))
    with running_kube_apiserver(tmp_path_factory.mktemp("kube"), ca) as api:
        with api.client() as client:
            for namespace in ("workloads", "edgetrust-system"):
                assert client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}}).status_code == 201
        yield api


@pytest.fixture
def site_b_kube(kube: KubeAPI) -> KubeAPI:
    with kube.client() as client:
        for namespace in ("workloads", "kube-system", "edgetrust-system"):
            client.delete(NETWORK_POLICIES.format(namespace)).raise_for_status()
    return kube


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry mirror near site-b: the real distribution registry, with whoever runs it as the attacker."""
    with running_registry(tmp_path_factory.mktemp("mirror"), TestCA(tmp_path_factory.mktemp("mirror-ca"))) as found:
        yield found


class Publishers:
    """The two groups' signing keys (trusted everywhere) and policy repositories."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ci-stores", "ci-gateways")}
        self.public = {
            name: key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for name, key in self.keys.items()
        }

    def repo(self, name: str, *, without: tuple[str, ...] = ()) -> Path:
        """A copy of the policy repository, minus some files (e.g. 'edge-gateway' or 'edge-gateway/allow-hub.yaml')."""
        path = self.work / "repos" / name
        shutil.copytree(REPO_POLICIES, path)
        write_site_parameters(path / "parameters.yaml")  # the site's registries
        for item in without:
            target = path / "networkpolicies" / item
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        return path

    def files(self, repo: Path, *, counter: int, group: str) -> dict[str, bytes]:
        return build_files(read_repository(repo), counter=counter, commit=f"c{counter:04d}", group=group)

    def sign(self, files: dict[str, bytes], key_id: str) -> bytes:
        return pack(sign_files(files, SigningKey(key_id, self.keys[key_id])))

    def bundle(self, repo: Path, *, counter: int, group: str, key_id: str) -> bytes:
        return self.sign(self.files(repo, counter=counter, group=group), key_id)


@dataclass
class Run:
    returncode: int
    output: str
    peak_rss_kib: int


class SiteB:
    """site-b's real `edgetrust-syncer run --once` process: group gateways, site class edge-gateway."""

    def __init__(self, work: Path, hub: RunningHub, kube: KubeAPI, publishers: Publishers) -> None:
        self.work = work
        self.hub = hub
        self.kube = kube
        self.state = work / "site-b-state"
        self.svid = issue_svid_files(hub.hub.ca, "spiffe://edge.example/cluster/site-b", work / "site-b-svid")
        self.token = work / "kube-token"
        self.token.write_text(kube.token)
        self.keys = []
        for key_id, pem in publishers.public.items():
            path = work / f"{key_id}.pem"
            path.write_bytes(pem)
            self.keys += ["--verification-key", f"{key_id}={path}"]
        self.runs = 0

    def argv(self, *extra: str, hub_url: str | None = None, ca_bundle: Path | None = None) -> list[str]:
        argv = [str(Path(sys.executable).parent / "edgetrust-syncer"), "run", "--wait", "1"]
        argv += ["--hub", hub_url or self.hub.url, "--ca-bundle", str(ca_bundle or self.hub.ca_bundle)]
        argv += ["--svid", str(self.svid[0]), "--svid-key", str(self.svid[1])]
        argv += ["--cluster", "site-b", "--group", "gateways", "--site-class", "edge-gateway"]
        argv += ["--state-dir", str(self.state), *self.keys, *extra]
        argv += ["--kube-url", self.kube.url, "--kube-token-file", str(self.token)]
        return [*argv, "--kube-ca-file", str(self.kube.ca_file)]

    def log(self) -> Path:
        self.runs += 1
        return self.work / f"syncer-{self.runs}.log"

    def sync(self, *extra: str, hub_url: str | None = None, ca_bundle: Path | None = None) -> Run:
        """One sync (`--once`), as a job would run it."""
        log = self.log()
        with log.open("wb") as out:
            done = subprocess.run(
                [*self.argv(*extra, hub_url=hub_url, ca_bundle=ca_bundle), "--once"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        return Run(done.returncode, log.read_text(), 0)

    def peak_until(self, text: str, *extra: str, hub_url: str | None = None, ca_bundle: Path | None = None) -> Run:
        """The syncer as the Deployment runs it, until it logs `text`; then its peak resident set (VmHWM, which
        only grows) is read from /proc and the process is stopped, by its pid."""
        log = self.log()
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.argv(*extra, hub_url=hub_url, ca_bundle=ca_bundle), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 120
            while text not in log.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the syncer never logged {text!r}:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return Run(process.returncode, log.read_text(), peak)

    def guard(self) -> int:
        counter: int = json.loads((self.state / "applied-revision.json").read_text())["counter"]
        return counter

    def last_known_good(self) -> bytes:
        return (self.state / "last-known-good.tar.gz").read_bytes()


def live(kube: KubeAPI, namespace: str = "workloads") -> dict[str, dict[str, Any]]:
    with kube.client() as client:
        answer = client.get(NETWORK_POLICIES.format(namespace))
        answer.raise_for_status()
    return {item["metadata"]["name"]: item for item in answer.json()["items"]}


def versions(kube: KubeAPI) -> dict[str, str]:
    return {name: item["metadata"]["resourceVersion"] for name, item in live(kube).items()}


def publisher_client(hub: RunningHub, spiffe_id: str, directory: Path) -> httpx.Client:
    cert, key = issue_svid_files(hub.hub.ca, spiffe_id, directory)
    context = ssl.create_default_context(cafile=str(hub.ca_bundle))
    context.load_cert_chain(str(cert), str(key))
    return httpx.Client(base_url=hub.url, verify=context, timeout=30)


def counter_of(hub: RunningHub, group: str) -> int | None:
    assert hub.hub.policy is not None
    rollout = hub.hub.policy.rollout(group)
    return rollout.counter if rollout is not None else None


@pytest.fixture
def fleet(tmp_path: Path, site_b_kube: KubeAPI) -> Iterator[tuple[RunningHub, Publishers, SiteB]]:
    publishers = Publishers(tmp_path)
    with running_policy_hub(tmp_path / "hub", fleet=FLEET, publisher_keys=publishers.public) as hub:
        yield hub, publishers, SiteB(tmp_path, hub, site_b_kube, publishers)


def publish(hub: RunningHub, who: str, group: str, blob: bytes, work: Path) -> httpx.Response:
    with publisher_client(hub, who, work / "publishers" / who.rsplit("/", 1)[-1]) as client:
        return client.post(f"/v1/policy/bundles/{group}", content=blob)


def genuine_first_revision(hub: RunningHub, publishers: Publishers, site: SiteB, work: Path) -> Path:
    """site-b's group publishes revision 1 and site-b applies it; the repository is returned for later revisions."""
    repo = publishers.repo("gateways-1")
    published = publish(
        hub, GATEWAYS_CI, "gateways", publishers.bundle(repo, counter=1, group="gateways", key_id="ci-gateways"), work
    )
    assert published.status_code == 200, published.text
    first = site.sync()
    assert first.returncode == 0, first.output
    assert set(live(site.kube)) == GENUINE
    return repo


def serve_from_mirror(mirror: Registry, blob: bytes) -> str:
    reference = f"{mirror.host}/policy/gateways:current"
    push_bundle(OCIReference.parse(reference), blob, registry_settings(mirror.ca_file))
    return reference


# --- finding 14: a bundle is bound to its cluster group --------------------------------------------------------


def test_group_a_bundle_handed_to_group_b_by_a_hostile_mirror_is_refused_and_b_takes_its_next_revision(
    fleet: tuple[RunningHub, Publishers, SiteB], mirror: Registry, tmp_path: Path
) -> None:
    hub, publishers, site = fleet
    repo_b = genuine_first_revision(hub, publishers, site, tmp_path)
    before = versions(site.kube)

    # group stores' genuine revision 50: signed by a trusted key, and nothing in it for site class edge-gateway,
    # so applied at site-b it would prune every policy there and move its guard past gateways' next 49 revisions
    stores = publishers.bundle(
        publishers.repo("stores", without=("edge-gateway",)), counter=50, group="stores", key_id="ci-stores"
    )
    assert publish(hub, STORES_CI, "stores", stores, tmp_path).status_code == 200  # genuine in its own group

    reference = serve_from_mirror(mirror, stores)
    handed = site.sync("--bundle-oci", reference, "--registry-ca", str(mirror.ca_file))
    assert handed.returncode == 1, handed.output
    assert "bundle_wrong_group" in handed.output
    assert "signed for cluster group 'stores'; this cluster is in group 'gateways'" in handed.output
    assert versions(site.kube) == before, "site-b's NetworkPolicies changed"
    assert site.guard() == 1, "another group's bundle moved site-b's rollback guard"

    # the hub: a publisher of stores may not publish to gateways, and no one may publish a stores bundle there
    for_gateways = publishers.bundle(repo_b, counter=60, group="gateways", key_id="ci-stores")
    wrong_publisher = publish(hub, STORES_CI, "gateways", for_gateways, tmp_path)
    assert wrong_publisher.status_code == 403
    # refused by the authorization layer, before the bundle is read (PolicyBundles.publish checks it again)
    assert wrong_publisher.json()["error"] == "caller_not_allowed"
    assert "is not a publisher of group 'gateways'" in wrong_publisher.json()["reason"]
    wrong_group = publish(hub, GATEWAYS_CI, "gateways", stores, tmp_path)
    assert wrong_group.status_code == 403
    assert "signed for cluster group 'stores', not 'gateways'" in wrong_group.json()["reason"]
    assert counter_of(hub, "gateways") == 1

    # gateways' own next revision (counter 2, far below stores' 50) still applies at site-b
    (repo_b / "networkpolicies" / "edge-gateway" / "allow-hub.yaml").unlink()
    second = publishers.bundle(repo_b, counter=2, group="gateways", key_id="ci-gateways")
    assert publish(hub, GATEWAYS_CI, "gateways", second, tmp_path).status_code == 200
    taken = site.sync()
    assert taken.returncode == 0, taken.output
    assert "sync: applied 000000000002-c0002" in taken.output
    assert set(live(site.kube)) == {"default-deny", "allow-dns"}
    assert site.guard() == 2


# --- finding 15: never take over or prune what is not ours -------------------------------------------------------


HAND_MADE = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-dns", "namespace": "workloads", "labels": {"team": "platform"}},
    "spec": {"podSelector": {"matchLabels": {"app": "legacy"}}, "policyTypes": ["Ingress"]},
}


def test_bundle_naming_a_hand_made_networkpolicy_neither_takes_it_over_nor_prunes_it_later(
    fleet: tuple[RunningHub, Publishers, SiteB], tmp_path: Path
) -> None:
    hub, publishers, site = fleet
    with site.kube.client() as client:
        created = client.post(NETWORK_POLICIES.format("workloads"), json=HAND_MADE)
        assert created.status_code == 201, created.text
    hand_made = created.json()

    def untouched() -> None:
        now = live(site.kube)["allow-dns"]
        assert now["metadata"]["resourceVersion"] == hand_made["metadata"]["resourceVersion"]
        assert now["metadata"]["labels"] == {"team": "platform"}
        assert now["spec"] == hand_made["spec"]
        managers = {entry["manager"] for entry in now["metadata"].get("managedFields") or []}
        assert "edgetrust-syncer" not in managers

    repo = publishers.repo("gateways")
    first = publishers.bundle(repo, counter=1, group="gateways", key_id="ci-gateways")
    assert publish(hub, GATEWAYS_CI, "gateways", first, tmp_path).status_code == 200
    refused = site.sync()
    assert refused.returncode == 1, refused.output
    assert "apply_conflict" in refused.output
    assert "NetworkPolicy workloads/allow-dns exists and is not managed by edgetrust" in refused.output
    untouched()
    assert set(live(site.kube)) == {"allow-dns"}, "all or nothing: nothing of the refused bundle was applied"
    assert hub.hub.policy is not None
    report = hub.hub.policy.status["site-b"]
    assert report["result"] == "failed"
    assert "workloads/allow-dns" in report["error"]

    # the next revisions leave allow-dns out (as the old force=true apply would have let them prune it)
    (repo / "networkpolicies" / "edge-gateway" / "allow-dns.yaml").unlink()
    second = publishers.bundle(repo, counter=2, group="gateways", key_id="ci-gateways")
    assert publish(hub, GATEWAYS_CI, "gateways", second, tmp_path).status_code == 200
    applied = site.sync()
    assert applied.returncode == 0, applied.output
    assert set(live(site.kube)) == {"default-deny", "allow-hub", "allow-dns"}
    untouched()

    # one of ours loosened by hand (another field manager): still ours, so the next sync puts it back
    with site.kube.client() as client:
        edited = client.patch(
            NETWORK_POLICIES.format("workloads") + "/default-deny",
            params={"fieldManager": "kubectl-edit"},
            json={"spec": {"policyTypes": ["Ingress"]}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert edited.status_code == 200, edited.text
    (repo / "networkpolicies" / "edge-gateway" / "allow-hub.yaml").unlink()
    third = publishers.bundle(repo, counter=3, group="gateways", key_id="ci-gateways")
    assert publish(hub, GATEWAYS_CI, "gateways", third, tmp_path).status_code == 200
    pruned = site.sync()
    assert pruned.returncode == 0, pruned.output
    assert set(live(site.kube)) == {"default-deny", "allow-dns"}  # ours pruned, the hand-made one kept
    assert live(site.kube)["default-deny"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    untouched()


# --- finding 16: no NetworkPolicy in kube-system or edgetrust-system, at any stage ------------------------------


LOCKOUT = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny-all", "namespace": "kube-system"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
}


def test_signed_bundle_restricting_kube_system_is_refused_by_build_sign_hub_and_syncer(
    fleet: tuple[RunningHub, Publishers, SiteB], mirror: Registry, tmp_path: Path
) -> None:
    hub, publishers, site = fleet
    trustctl = str(Path(sys.executable).parent / "trustctl")

    locked = publishers.repo("lockout")
    (locked / "networkpolicies" / "edge-gateway" / "deny-all.yaml").write_text(yaml.safe_dump(LOCKOUT))
    out = tmp_path / "lockout.tar.gz"
    built = subprocess.run(
        [trustctl, "policy", "build", str(locked), "--out", str(out), "--group", "gateways", "--counter", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert built.returncode == 1, built.stdout + built.stderr
    assert "kube-system/deny-all would restrict kube-system" in built.stderr
    assert not out.exists()

    repo = genuine_first_revision(hub, publishers, site, tmp_path)
    before = versions(site.kube)
    good = site.last_known_good()

    # built by hand, past `policy build`, and signed by a key every cluster trusts
    files = publishers.files(repo, counter=2, group="gateways")
    data = f"{ROOT}/networkpolicies/data.json"
    policies = json.loads(files[data])
    policies["edge-gateway"].append(copy.deepcopy(LOCKOUT))
    files[data] = json.dumps(policies).encode()
    assert json.loads(files[MANIFEST])["metadata"]["group"] == "gateways"  # for the right group, from the right key
    _refused_by_sign_hub_and_syncer(fleet, mirror, tmp_path, files, "kube-system/deny-all would restrict kube-system")
    assert live(site.kube, "kube-system") == {}, "a NetworkPolicy reached kube-system"
    assert versions(site.kube) == before
    assert site.last_known_good() == good


def _refused_by_sign_hub_and_syncer(
    fleet: tuple[RunningHub, Publishers, SiteB], mirror: Registry, tmp_path: Path, files: dict[str, bytes], named: str
) -> None:
    """Bundle files built by hand past `policy build` and signed by a key every cluster trusts: `trustctl policy
    sign` refuses them, the hub refuses the publish (its counter stays at 1), and a syncer handed them by a mirror
    refuses them before its rollback guard moves; each names `named`."""
    hub, publishers, site = fleet
    trustctl = str(Path(sys.executable).parent / "trustctl")
    unsigned = tmp_path / "unsigned.tar.gz"
    unsigned.write_bytes(pack(files))
    key = tmp_path / "ci-gateways.key"
    key.write_bytes(
        publishers.keys["ci-gateways"].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    signing = subprocess.run(
        [trustctl, "policy", "sign", str(unsigned), "--key", str(key), "--key-id", "ci-gateways"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert signing.returncode == 1, signing.stdout + signing.stderr
    assert named in signing.stderr
    signed = publishers.sign(files, "ci-gateways")

    at_hub = publish(hub, GATEWAYS_CI, "gateways", signed, tmp_path)
    assert at_hub.status_code == 403
    assert "bundle_policy_refused" in at_hub.json()["reason"]
    assert named in at_hub.json()["reason"]
    assert counter_of(hub, "gateways") == 1

    handed = site.sync("--bundle-oci", serve_from_mirror(mirror, signed), "--registry-ca", str(mirror.ca_file))
    assert handed.returncode == 1, handed.output
    assert "bundle_policy_refused" in handed.output
    assert named in handed.output
    assert site.guard() == 1, "the refused bundle moved the rollback guard"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        # a misspelt mode: the webhook would refuse to start on it, leaving the cluster on its last policies
        (lambda meta: meta.update(mode="enfroce"), "mode: 'enfroce' is not one of enforce, warn, audit, dryrun"),
        # the site's allowlist emptied: in enforce mode it would deny every pod
        (lambda meta: meta["parameters"].update(repos=[]), "parameters.repos is site-specific and not set"),
    ],
)
def test_signed_bundle_with_a_policy_file_the_webhook_would_refuse_is_refused_by_sign_hub_and_syncer(
    fleet: tuple[RunningHub, Publishers, SiteB],
    mirror: Registry,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    named: str,
) -> None:
    hub, publishers, site = fleet
    repo = genuine_first_revision(hub, publishers, site, tmp_path)
    before = versions(site.kube)
    good = site.last_known_good()

    # built by hand, past `policy build`, and signed by a key every cluster trusts
    files = publishers.files(repo, counter=2, group="gateways")
    name = f"{ROOT}/admission/allowed_repos/policy.yaml"
    meta = yaml.safe_load(files[name])
    change(meta)
    files[name] = yaml.safe_dump(meta).encode()
    _refused_by_sign_hub_and_syncer(fleet, mirror, tmp_path, files, f"{name}: {named}")
    assert versions(site.kube) == before
    assert site.last_known_good() == good


# --- finding 17: answers are read with a bound -----------------------------------------------------------------


class HostileServer:
    """A TLS server on loopback that declares a 1 KiB bundle layer (as a registry mirror) and then sends 300 MiB,
    and answers a hub poll with 300 MiB; bodies are close-delimited (no Content-Length to refuse up front), made
    on the fly, and stop when the reader hangs up."""

    def __init__(self, work: Path) -> None:
        self.ca = TestCA(work / "hostile-ca")
        serving = self.ca.issue("hostile")
        self.declared = b"x" * 1024
        self.layer_digest = "sha256:" + hashlib.sha256(self.declared).hexdigest()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                if self.path.startswith("/v2/policy/gateways/manifests/"):
                    manifest = {
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {
                            "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": "sha256:" + "0" * 64,
                            "size": 2,
                        },
                        "layers": [
                            {
                                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "digest": server.layer_digest,
                                "size": len(server.declared),
                            }
                        ],
                    }
                    body = json.dumps(manifest).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.flood()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.flood()

            def flood(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.end_headers()
                chunk = b"\x1f" * (64 * 1024)
                sent = 0
                try:  # until the reader hangs up
                    while sent < HOSTILE_BYTES:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

        self.port = free_port()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(serving.cert), str(serving.key))
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def test_mirror_declaring_1kib_and_hub_answer_sending_300mib_are_cut_off_at_the_bound(
    fleet: tuple[RunningHub, Publishers, SiteB], tmp_path: Path
) -> None:
    hub, publishers, site = fleet
    genuine_first_revision(hub, publishers, site, tmp_path)
    before = versions(site.kube)
    good = site.last_known_good()

    with HostileServer(tmp_path) as hostile:
        mirror_refusal = "mirror_answer_refused: bundle layer sha256:"
        from_mirror = site.peak_until(
            mirror_refusal,
            "--bundle-oci",
            f"127.0.0.1:{hostile.port}/policy/gateways:current",
            "--registry-ca",
            str(hostile.ca.ca_file),
        )
        assert "body passes the size it declared (1024 bytes); refused, read stopped" in from_mirror.output
        assert from_mirror.peak_rss_kib < MAX_SYNCER_RSS_KIB, f"syncer peaked at {from_mirror.peak_rss_kib} KiB"

        hub_refusal = "hub_answer_refused: /v1/policy/bundle: body passes the limit (8388608 bytes); refused"
        from_hub = site.peak_until(hub_refusal, hub_url=hostile.url, ca_bundle=hostile.ca.ca_file)
        assert from_hub.peak_rss_kib < MAX_SYNCER_RSS_KIB, f"syncer peaked at {from_hub.peak_rss_kib} KiB"

    assert versions(site.kube) == before
    assert site.last_known_good() == good
    assert site.guard() == 1
