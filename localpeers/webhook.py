"""The real webhook (uvicorn, TLS) on loopback in a background thread, and AdmissionReview payloads to send it."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from admission.app import create_app
from admission.controller import AdmissionController
from admission.server import build_controller, build_follower, build_node_gate, build_reporter
from admission.settings import AdmissionSettings
from edgetrust.bundles.policyfile import SiteParameters
from localpeers.hub import free_port
from localpeers.processes import running
from localpeers.tlsca import TestCA

REPO = Path(__file__).resolve().parents[1]
REPO_POLICIES = REPO / "policies" / "admission"
#: the site parameters of the tests' and the demo's "site": its registries are the loopback ones they start
#: (the shipped library names no registry; policies/admission/allowed_repos/policy.yaml)
LOOPBACK_REPOS = ("127.0.0.1:", "127.0.0.1/", "localhost:", "localhost/", "registry.edge.example/")
LOOPBACK_SITE = SiteParameters({"allowed_repos": {"repos": list(LOOPBACK_REPOS)}}, "localpeers LOOPBACK_SITE")


def write_site_parameters(path: Path) -> Path:
    """LOOPBACK_SITE as a parameters file (`--parameters`, or a policy repository's parameters.yaml)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({name: dict(values) for name, values in LOOPBACK_SITE.values.items()}))
    return path


def policy_dir(dest: Path, *, rego: bool = True, extra: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """The repo's policy library (or only its shared lib) plus extra policies written as policy.yaml files.

    The copy holds LOOPBACK_SITE's values in its policy.yaml files, as a site that edits its copy of the
    library would. An extra policy's `files` entry maps file names to bytes or source text to write beside
    its policy.yaml.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for folder in REPO_POLICIES.iterdir():
        if folder.is_dir() and (rego or folder.name == "lib"):
            shutil.copytree(folder, dest / folder.name)
    for name, values in LOOPBACK_SITE.values.items():
        meta_path = dest / name / "policy.yaml"
        if meta_path.is_file():
            meta = yaml.safe_load(meta_path.read_text())
            meta["parameters"] = {**(meta.get("parameters") or {}), **values}
            meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    for name, spec in (extra or {}).items():
        folder = dest / name
        folder.mkdir()
        meta = {k: v for k, v in spec.items() if k != "files"}
        (folder / "policy.yaml").write_text(yaml.safe_dump({"name": name, **meta}))
        for filename, content in spec.get("files", {}).items():
            target = folder / filename
            target.write_bytes(content if isinstance(content, bytes) else str(content).encode())
    return dest


class RunningWebhook:
    def __init__(self, controller: AdmissionController, url: str, ca_file: Path) -> None:
        self.controller = controller
        self.url = url
        self.ca_file = ca_file

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca_file)), timeout=30)

    def review(self, review: Mapping[str, Any], *, path: str = "/validate") -> dict[str, Any]:
        with self.client() as client:
            answer = client.post(path, content=json.dumps(review))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body["response"]  # type: ignore[no-any-return]


@contextmanager
def running_webhook(workdir: Path, ca: TestCA, **settings: Any) -> Iterator[RunningWebhook]:
    workdir.mkdir(parents=True, exist_ok=True)
    cert = ca.issue(f"webhook-{uuid.uuid4().hex[:8]}")
    port = settings.pop("listen_port", None) or free_port()
    admission_settings = AdmissionSettings(listen_port=port, tls_cert=cert.cert, tls_key=cert.key, **settings)
    controller = build_controller(admission_settings)
    controller.node_gate = gate = build_node_gate(admission_settings)
    config = uvicorn.Config(
        create_app(
            controller,
            follower=build_follower(admission_settings, controller),
            reporter=build_reporter(admission_settings, controller),
            node_gate=gate,
        ),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert.cert),
        ssl_keyfile=str(cert.key),
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("webhook did not start within 20 s (see log: policies loaded into OPA?)")
        time.sleep(0.02)
    try:
        yield RunningWebhook(controller, f"https://127.0.0.1:{port}", ca.ca_file)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def pod(
    images: Sequence[str] | str,
    *,
    name: str = "app",
    labels: Mapping[str, str] | None = None,
    security: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    images = [images] if isinstance(images, str) else list(images)
    containers = []
    for index, image in enumerate(images):
        container: dict[str, Any] = {"name": f"c{index}", "image": image, "resources": {"limits": {"memory": "64Mi"}}}
        container["securityContext"] = {"runAsNonRoot": True, **(security or {})}
        containers.append(container)
    metadata = {"name": name, "labels": dict(labels if labels is not None else {"app.kubernetes.io/name": name})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": containers, **spec}}


WORKLOAD_GROUPS = {
    "Pod": ("", "v1"),
    "Deployment": ("apps", "v1"),
    "StatefulSet": ("apps", "v1"),
    "DaemonSet": ("apps", "v1"),
    "ReplicaSet": ("apps", "v1"),
    "Job": ("batch", "v1"),
    "CronJob": ("batch", "v1"),
}


def workload(kind: str, pod_object: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap a Pod's spec in another pod-bearing kind."""
    if kind == "Pod":
        return dict(pod_object)
    labels = dict(pod_object["metadata"]["labels"]) or {"edgetrust.io/test": "workload"}
    template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": dict(pod_object["spec"])}
    group, version = WORKLOAD_GROUPS[kind]
    spec: dict[str, Any] = {"template": template}
    if group == "apps":
        spec["selector"] = {"matchLabels": labels}  # what the API server's validation requires of these kinds
    if kind in ("Job", "CronJob"):
        template["spec"]["restartPolicy"] = "Never"
    if kind == "CronJob":
        spec = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {
        "apiVersion": f"{group}/{version}" if group else version,
        "kind": kind,
        "metadata": dict(pod_object["metadata"]),
        "spec": spec,
    }


def review(
    obj: Mapping[str, Any], *, namespace: str = "default", operation: str = "CREATE", uid: str | None = None
) -> dict[str, Any]:
    kind = str(obj["kind"])
    group, version = WORKLOAD_GROUPS.get(kind, ("", "v1"))
    resource = kind.lower() + "s"
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": namespace,
            "name": obj["metadata"]["name"],
            "operation": operation,
            "userInfo": {"username": "edgetrust-test"},
            "object": dict(obj),
            "oldObject": None,
            "dryRun": False,
        },
    }


@dataclass(frozen=True)
class WebhookProcess:
    url: str
    pid: int
    context: ssl.SSLContext


@contextmanager
def webhook_process(workdir: Path, ca: TestCA, **settings: Any) -> Iterator[WebhookProcess]:
    """`edgetrust-admission serve` in its own process (benchmarks, the demo), configured by ADMISSION_* variables."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cert = ca.issue(f"webhook-{uuid.uuid4().hex[:8]}")
    env = dict(os.environ)
    settings = {"listen_port": port, "tls_cert": cert.cert, "tls_key": cert.key, **settings}
    env.update({f"ADMISSION_{key.upper()}": str(value) for key, value in settings.items()})
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(ca.ca_file))

    def ready() -> bool:
        return httpx.get(f"{url}/readyz", verify=context, timeout=1).status_code == 200

    argv = [str(Path(sys.executable).parent / "edgetrust-admission"), "serve"]
    with running(argv, ready=ready, log=workdir / "webhook.log", env=env) as process:
        yield WebhookProcess(url, process.pid, context)
