"""Admission bypasses, performed against the real webhook (uvicorn over TLS, and the real `edgetrust-admission
serve` process), the real OPA and a real distribution registry holding images signed by the real cosign."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admission.rego.inventory import Inventory, InventoryError, InventorySync, KubeSource
from admission.rego.opa import OpaDecider, OpaSettings
from localpeers.hub import free_port
from localpeers.kube import running_kube_apiserver
from localpeers.opa_server import OpaServer, opa_server
from localpeers.peers import peer
from localpeers.processes import running
from localpeers.registry import Registry, registry_binary, running_registry
from localpeers.tlsca import TestCA
from localpeers.webhook import RunningWebhook, pod, policy_dir, review, running_webhook
from tests.integration.admission.conftest import Images, signature_policy
from tests.support.netns import Link, namespace_link
from tests.support.sigstore_instance import PrivateSigstore

pytestmark = pytest.mark.integration

ADMISSION = str(Path(sys.executable).parent / "edgetrust-admission")


def _patch(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(base64.b64decode(answer["patch"])) if "patch" in answer else []  # type: ignore[no-any-return]


# --- issue 12: containers after the 256th were never checked ---------------------------------------------------


def test_unsigned_257th_container_is_refused_and_never_left_unpinned(webhook: RunningWebhook, images: Images) -> None:
    signed_256 = pod([images.signed] * 256, name="wide")
    assert webhook.review(review(signed_256))["allowed"] is True
    pinned = webhook.review(review(signed_256), path="/mutate")
    assert pinned["allowed"] is True
    patch = _patch(pinned)
    assert len(patch) == 256  # every one of them pinned: nothing cut off
    assert {op["value"] for op in patch} == {images.signed.rsplit(":", 1)[0] + "@" + images.signed_digest}

    attack = pod([images.signed] * 256, name="wide")
    attack["spec"]["ephemeralContainers"] = [{"name": "sneaky", "image": images.unsigned}]
    for path in ("/validate", "/mutate"):
        answer = webhook.review(review(attack, namespace="shop"), path=path)
        assert answer["allowed"] is False, answer
        assert "257 containers" in answer["status"]["message"]
        assert "patch" not in answer
    # the refused object went back untouched: the webhook answers, it never edits the request
    assert attack["spec"]["ephemeralContainers"] == [{"name": "sneaky", "image": images.unsigned}]


def test_container_entry_that_is_not_an_object_is_refused_not_skipped(webhook: RunningWebhook, images: Images) -> None:
    attack = pod([images.signed, images.unsigned])
    attack["spec"]["initContainers"] = ["not-a-container"]
    answer = webhook.review(review(attack))
    assert answer["allowed"] is False
    assert "initContainers[0] is a str" in answer["status"]["message"]


# --- issue 13: registry host respellings escaped the signature policies ----------------------------------------


@pytest.fixture(scope="module")
def registry_on_443(
    tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA, registry: Registry
) -> Iterator[Registry]:
    """A second registry process on the HTTPS default port serving the session registry's storage, so that
    `localhost`, `LOCALHOST`, `localhost:443` and `localhost:0443` are real spellings of the same images."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 443))
        except OSError as exc:
            pytest.fail(f"127.0.0.1:443 is not free for the default-port registry ({exc}); stop whatever holds it")
    work = tmp_path_factory.mktemp("registry-443")
    (work / "data").symlink_to(registry.workdir / "data")
    with running_registry(work, test_ca, port=443) as second:
        yield second


@pytest.fixture(scope="module")
def respelling_webhook(
    tmp_path_factory: pytest.TempPathFactory,
    test_ca: TestCA,
    registry: Registry,
    registry_on_443: Registry,
    cosign_keys: tuple[Path, Path],
    sigstore: PrivateSigstore,
    images: Images,
) -> Iterator[RunningWebhook]:
    """The repo's policy library (allowed_repos: `localhost:`, `localhost/`...) and a signature policy whose
    globs are written the usual way, each in one spelling only."""
    work = tmp_path_factory.mktemp("respelling")
    globs = [f"localhost:{registry.port}/edgetrust/*", "localhost/edgetrust/*", "index.docker.io/edgetrust/*"]
    extra = {"signed_images": signature_policy(registry, cosign_keys, sigstore, images=globs)}
    with (
        opa_server(work / "opa") as opa,
        running_webhook(
            work / "webhook",
            test_ca,
            policy_dir=policy_dir(work / "policies", extra=extra),
            opa_port=opa.port,
            registry_ca_file=registry.ca_file,
            registry_timeout_s=2.0,
        ) as running_hook,
    ):
        yield running_hook


def _spellings(port: int) -> dict[str, list[str]]:
    """canonical registry -> spellings of it that the container runtime pulls the same image from"""
    return {
        f"localhost:{port}": [f"localhost:{port}", f"LOCALHOST:{port}", f"LocalHost:0{port}"],
        "localhost": ["localhost", "LOCALHOST", "localhost:443", "Localhost:0443"],
    }


def test_respelled_registry_host_does_not_escape_the_signature_policy(
    respelling_webhook: RunningWebhook, registry: Registry, images: Images
) -> None:
    for canonical, spellings in _spellings(registry.port).items():
        for host in spellings:
            unsigned = review(pod(f"{host}/edgetrust/unsigned:v1", name="respelled"))
            for path in ("/validate", "/mutate"):
                answer = respelling_webhook.review(unsigned, path=path)
                assert answer["allowed"] is False, (host, answer)
                assert "[signed_images]" in answer["status"]["message"], (host, answer)
                assert "no cosign signature" in answer["status"]["message"], (host, answer)
                assert "patch" not in answer
            # the signed image stays admitted under every spelling (allowed_repos judges the canonical form too),
            # and /mutate pins it in the canonical spelling to the digest that was verified
            signed = review(pod(f"{host}/edgetrust/signed:v1", name="signed"))
            assert respelling_webhook.review(signed)["allowed"] is True, host
            pinned = respelling_webhook.review(signed, path="/mutate")
            assert pinned["allowed"] is True, (host, pinned)
            assert _patch(pinned) == [
                {
                    "op": "replace",
                    "path": "/spec/containers/0/image",
                    "value": f"{canonical}/edgetrust/signed@{images.signed_digest}",
                }
            ], host


def test_docker_hub_aliases_do_not_escape_a_policy_written_for_one_of_them(respelling_webhook: RunningWebhook) -> None:
    """The policy says `index.docker.io/edgetrust/*`; every other name of Docker Hub is the same registry. Docker
    Hub cannot be reached from here, so a covered image fails closed; an uncovered one would have been admitted."""
    for image in (
        "edgetrust/unsigned:v1",
        "registry-1.docker.io/edgetrust/unsigned:v1",
        "Registry.Hub.Docker.com:443/edgetrust/unsigned:v1",
        "INDEX.docker.io:0443/edgetrust/unsigned:v1",
    ):
        answer = respelling_webhook.review(review(pod(image, name="hub")))
        assert answer["allowed"] is False, image
        assert "[signed_images]" in answer["status"]["message"], (image, answer)
        assert "(= docker.io/edgetrust/unsigned:v1)" in answer["status"]["message"], (image, answer)


# --- issue 18: an empty or mistyped policy directory admitted everything -----------------------------------------


@pytest.fixture
def own_opa(tmp_path: Path) -> Iterator[OpaServer]:
    with opa_server(tmp_path / "opa") as server:
        yield server


def _serve_argv(tmp_path: Path, test_ca: TestCA, opa: OpaServer, port: int, *extra: str) -> list[str]:
    cert = test_ca.issue(f"webhook-{uuid.uuid4().hex[:8]}")
    return [
        ADMISSION,
        "serve",
        "--listen-port",
        str(port),
        "--tls-cert",
        str(cert.cert),
        "--tls-key",
        str(cert.key),
        "--opa-port",
        str(opa.port),
        *extra,
    ]


def test_webhook_with_empty_or_mistyped_policy_dir_refuses_to_start(
    tmp_path: Path, test_ca: TestCA, own_opa: OpaServer
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    parent = tmp_path / "policies"  # --policy-dir policies instead of policies/admission
    policy_dir(parent / "admission")
    cases = {
        "empty": (["--policy-dir", str(empty)], "no admission policy in"),
        "parent folder": (["--policy-dir", str(parent)], "no admission policy in"),
        "mistyped": (["--policy-dir", str(tmp_path / "polcies")], "does not exist"),
        "mistyped gatekeeper": (
            ["--policy-dir", str(parent / "admission"), "--gatekeeper-dir", str(tmp_path / "gatekeper")],
            "Gatekeeper directory",
        ),
    }
    for case, (flags, reason) in cases.items():
        port = free_port()
        process = subprocess.Popen(
            _serve_argv(tmp_path, test_ca, own_opa, port, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"{case}: the webhook started with no policy (it should refuse)")
        lines = stderr.decode().strip().splitlines()
        assert process.returncode != 0, case
        assert len(lines) == 1, (case, lines)  # one clear line, no traceback
        assert lines[0].startswith("edgetrust-admission: "), (case, lines)
        assert reason in lines[0], (case, lines)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/readyz", verify=_trust(test_ca), timeout=1)


def test_unsafe_allow_empty_policy_set_starts_warns_and_marks_every_admitted_review(
    tmp_path: Path, test_ca: TestCA, own_opa: OpaServer
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    argv = _serve_argv(tmp_path, test_ca, own_opa, port, "--policy-dir", str(empty), "--unsafe-allow-empty-policy-set")
    url = f"https://127.0.0.1:{port}"
    verify = _trust(test_ca)
    log = tmp_path / "webhook.log"

    def ready() -> bool:
        return httpx.get(f"{url}/readyz", verify=verify, timeout=1).status_code == 200

    with running(argv, ready=ready, log=log):
        assert "runs with NO policies" in log.read_text()
        privileged = pod("127.0.0.1:1/unsigned/anything", security={"privileged": True, "runAsNonRoot": False})
        for body, path in (
            (review(privileged), "/validate"),
            (review(privileged), "/mutate"),
            (review(privileged, operation="DELETE"), "/validate"),
        ):
            answer = httpx.post(f"{url}{path}", json=body, verify=verify, timeout=10).json()["response"]
            assert answer["allowed"] is True
            assert any("NO policies" in warning for warning in answer["warnings"]), answer
            assert answer["uid"] == body["request"]["uid"]


def _trust(ca: TestCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.ca_file))


# --- issue 12's sibling: the inventory was cut at its limit (and at the API server's first page) ----------------


def test_inventory_past_its_limit_or_first_page_is_never_synced_in_part(tmp_path: Path, test_ca: TestCA) -> None:
    """A uniqueness template or namespaceSelector judged on part of the cluster admits what the rest refuses:
    every page is listed, and an inventory over its limit is refused whole, the last complete one kept."""
    with running_kube_apiserver(tmp_path / "kube", test_ca) as kube, opa_server(tmp_path / "opa") as opa:
        names = [f"site-{i}" for i in range(7)]
        with kube.client() as client:
            for name in names:
                answer = client.post("/api/v1/namespaces", json={"metadata": {"name": name, "labels": {"n": name}}})
                assert answer.status_code == 201, answer.text

        async def sync(limit: int) -> tuple[Inventory, int | str]:
            inventory = Inventory(max_objects=limit)
            decider = OpaDecider(OpaSettings(port=opa.port))
            source = KubeSource(kube.url, kube.token, kube.ca_file)
            syncer = InventorySync(source, ["api/v1/namespaces"], inventory, decider, page_size=2)
            try:
                return inventory, await syncer.sync_once()
            except InventoryError as exc:
                return inventory, str(exc)
            finally:
                await syncer.close()
                await decider.close()

        inventory, count = asyncio.run(sync(50))
        assert isinstance(count, int)
        assert count > 2  # more than one page of 2
        assert set(names) <= set(inventory.tree["cluster"]["v1"]["Namespace"])  # every page, nothing cut
        assert (inventory.namespace_labels("site-6") or {}).get("n") == "site-6"
        small, refused = asyncio.run(sync(5))
        assert isinstance(refused, str)
        assert "over 5 objects" in refused
        assert len(small) == 0  # nothing partial was put in place


@pytest.fixture(scope="module")
def docker_hub_here(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA, registry: Registry) -> Iterator[Link]:
    """A network namespace in which `registry-1.docker.io` is a real registry (on 127.0.0.1:443, serving the
    session registry's storage, so `edgetrust/signed` is there, signed): Docker Hub as the runtime would reach
    it, without leaving this machine. `ip netns exec` puts /etc/netns/<name>/hosts over /etc/hosts."""
    work = tmp_path_factory.mktemp("hub")
    (work / "data").symlink_to(registry.workdir / "data")
    cert = test_ca.issue("docker-hub", hosts=("registry-1.docker.io", "127.0.0.1"))
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {"addr": "127.0.0.1:443", "tls": {"certificate": str(cert.cert), "key": str(cert.key)}},
    }
    (work / "config.yml").write_text(json.dumps(config))
    with namespace_link("hub", subnet=219) as link:
        hosts = Path("/etc/netns") / link.namespace
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text("127.0.0.1 localhost registry-1.docker.io\n")
        probe = link.exec_argv(sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 443), 1)")
        try:
            argv = link.exec_argv(registry_binary(), "serve", str(work / "config.yml"))
            with running(argv, ready=lambda: subprocess.run(probe).returncode == 0, log=work / "registry.log"):
                yield link
        finally:
            shutil.rmtree(hosts, ignore_errors=True)


def test_docker_hub_respellings_of_a_signed_image_stay_admitted_and_unsigned_refused(
    docker_hub_here: Link, tmp_path: Path, test_ca: TestCA, registry: Registry, images: Images
) -> None:
    """The real `edgetrust-admission serve` and OPA inside the namespace, reached over its veth; the signature
    policy is written `docker.io/edgetrust/*` and every other name of Docker Hub is judged by it."""
    link = docker_hub_here
    cert = test_ca.issue(f"webhook-{uuid.uuid4().hex[:8]}", hosts=(link.peer_address,))
    policies = policy_dir(
        tmp_path / "policies",
        rego=False,
        extra={"signed_images": signature_policy_for(registry, ["docker.io/edgetrust/*"])},
    )
    opa_port, port = free_port(), free_port()
    opa_argv = link.exec_argv(
        str(peer("opa")), "run", "--server", "--v0-compatible", "--addr", f"127.0.0.1:{opa_port}", "--log-level=error"
    )
    webhook_argv = link.exec_argv(
        ADMISSION,
        "serve",
        f"--listen-host={link.peer_address}",
        f"--listen-port={port}",
        f"--tls-cert={cert.cert}",
        f"--tls-key={cert.key}",
        f"--opa-port={opa_port}",
        f"--policy-dir={policies}",
        f"--registry-ca-file={registry.ca_file}",
    )
    url = f"https://{link.peer_address}:{port}"
    trust = _trust(test_ca)

    def ready() -> bool:
        return httpx.get(f"{url}/readyz", verify=trust, timeout=1).status_code == 200

    opa_probe = link.exec_argv(
        sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {opa_port}), 1)"
    )
    with (
        running(opa_argv, ready=lambda: subprocess.run(opa_probe).returncode == 0, log=tmp_path / "opa.log"),
        running(webhook_argv, ready=ready, log=tmp_path / "webhook.log"),
        httpx.Client(base_url=url, verify=trust, timeout=30) as client,
    ):
        for hub in ("docker.io", "index.docker.io", "registry-1.docker.io", "Registry.Hub.Docker.com:443", ""):
            prefix = f"{hub}/" if hub else ""
            unsigned = client.post("/validate", json=review(pod(f"{prefix}edgetrust/unsigned:v1"))).json()["response"]
            assert unsigned["allowed"] is False, (hub, unsigned)
            assert "[signed_images]" in unsigned["status"]["message"], (hub, unsigned)
            assert "no cosign signature" in unsigned["status"]["message"], (hub, unsigned)
            signed = review(pod(f"{prefix}edgetrust/signed:v1"))
            assert client.post("/validate", json=signed).json()["response"]["allowed"] is True, hub
            pinned = client.post("/mutate", json=signed).json()["response"]
            assert _patch(pinned) == [
                {
                    "op": "replace",
                    "path": "/spec/containers/0/image",
                    "value": f"docker.io/edgetrust/signed@{images.signed_digest}",
                }
            ], hub


def signature_policy_for(registry: Registry, globs: list[str]) -> dict[str, object]:
    """A keyed cosign policy (the session's trusted key) over the given globs."""
    _, public = registry.cosign_keypair("trusted")
    return {
        "type": "image-signature",
        "images": globs,
        "keys": ["cosign.pub"],
        "files": {"cosign.pub": public.read_bytes()},
    }
