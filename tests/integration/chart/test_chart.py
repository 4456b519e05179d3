"""The Helm chart with the real helm (pinned peer): lint --strict, every manifest of every example against the
Kubernetes schemas of each supported version, wrong values refused by name, and an install into a real
kube-apiserver after which pods are admitted or refused through the webhook configuration the chart made.

There is no kubelet here, so the chart's webhook pods stay Pending. The webhook process runs instead in a
network namespace (a non-loopback address the API server may route to), serving with the certificate the
chart generated (read back from its Secret), behind the chart's own Service: an EndpointSlice points the
Service at it, and kube-apiserver runs with --enable-aggregator-routing so that it dials the endpoint, as it
would a pod, verifying the chart's caBundle against <service>.<namespace>.svc.
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgetrust.bundles.format import build_files, pack, read_repository
from edgetrust.bundles.signing import SigningKey, sign_files
from localpeers.kube import running_kube_apiserver
from localpeers.peers import peer
from localpeers.processes import running
from localpeers.tlsca import TestCA
from localpeers.webhook import LOOPBACK_SITE, pod
from tests.support.netns import namespace_link

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "edgetrust"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
EDGE_SITE = CHART / "examples" / "edge-site.yaml"
#: the Kubernetes versions we support (Chart.yaml kubeVersion >= 1.33), oldest, middle and newest
VERSIONS = ("1.33.0", "1.35.0", "1.37.0")
#: cert-manager's kinds are CRDs, not in the Kubernetes schemas; they are checked for shape by lint only
CRD_GROUPS = ("cert-manager.io/",)
NAMESPACE = "edgetrust-system"


def helm(*argv: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/edgetrust-helm/cache", "HELM_CONFIG_HOME": "/tmp/edgetrust-helm"}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    done = subprocess.run([str(peer("helm")), *argv], capture_output=True, text=True, env=env, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_lint_strict(example: Path) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(example))
    assert "0 chart(s) failed" in done.stdout


def rendered(example: Path, version: str, *extra: str) -> list[dict[str, Any]]:
    done = helm(
        "template",
        "edgetrust",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "-f",
        str(example),
        "--kube-version",
        f"v{version}",
        *extra,
    )
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_manifest_validates_against_the_kubernetes_schemas(example: Path, version: str) -> None:
    validated, crds = [], []
    for doc in rendered(example, version):
        kind = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith(CRD_GROUPS):
            crds.append(kind)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{example.name} {kind} is invalid for Kubernetes {version}: {exc.message}") from exc
        validated.append(kind)
    assert len(validated) >= 5, validated
    for doc in rendered(example, version):
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, f"{doc['kind']} {container['name']}"
            assert security.get("readOnlyRootFilesystem") is True, f"{doc['kind']} {container['name']}"
            assert security.get("capabilities", {}).get("drop") == ["ALL"]
            assert "requests" in container.get("resources", {}), "sized for small nodes: requests are set"


def test_the_webhook_configuration_exempts_system_namespaces_and_takes_its_settings() -> None:
    docs = rendered(
        EDGE_SITE,
        VERSIONS[-1],
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "webhook.timeoutSeconds=7",
        "--set",
        "webhook.digestPinning=true",
    )
    by_kind = {d["kind"]: d for d in docs}
    validating = by_kind["ValidatingWebhookConfiguration"]["webhooks"][0]
    assert validating["failurePolicy"] == "Ignore"
    assert validating["timeoutSeconds"] == 7
    exempt = validating["namespaceSelector"]["matchExpressions"][0]
    assert exempt == {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]}
    assert base64.b64decode(validating["clientConfig"]["caBundle"]).startswith(b"-----BEGIN CERTIFICATE-----")
    assert by_kind["MutatingWebhookConfiguration"]["webhooks"][0]["clientConfig"]["service"]["path"] == "/mutate"
    assert by_kind["Deployment"]["spec"]["replicas"] == 2
    assert by_kind["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    opa = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][1]
    assert "--v0-compatible" in opa["args"]
    assert "--optimize-store-for-read-speed" in opa["args"]
    rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    assert rules == [
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "verbs": ["get", "list", "create", "patch", "delete"],
        }
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["webhook.failurePolicy=Sometimes"], "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'"),
        (["webhook.exemptNamespaces={default}"], "at '/webhook/exemptNamespaces': no items match contains schema"),
        (["webhook.replica=3"], "at '/webhook': additional properties 'replica' not allowed"),
        (["webhook.timeoutSeconds=31"], "at '/webhook/timeoutSeconds'"),
        (["syncer.hub=http://hub:8443"], "at '/syncer/hub'"),
        (["syncer.verificationKeys.ci-1=not a key"], "at '/syncer/verificationKeys/ci-1'"),
        (["webhook.policyBundleBase64=%%%"], "at '/webhook/policyBundleBase64'"),
        (["nodeAgent.enabled=true"], "at '/nodeAgent/hub'"),
    ],
)
def test_wrong_values_are_refused_by_name(values: list[str], message: str) -> None:
    argv = ["template", "t", str(CHART), "-f", str(EDGE_SITE), "--kube-version", "v1.37.0"]
    for value in values:
        argv += ["--set", value]
    done = helm(*argv, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_two_hub_replicas_need_a_shared_store() -> None:
    hub_example = CHART / "examples" / "hub-and-node-agent.yaml"
    done = helm(
        "template",
        "t",
        str(CHART),
        "-f",
        str(hub_example),
        "--set",
        "hub.storeSecret=",
        "--kube-version",
        "v1.37.0",
        check=False,
    )
    assert done.returncode != 0
    assert "hub.replicas > 1 needs hub.storeSecret" in done.stderr


def signed_policy_bundle(work: Path) -> tuple[str, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = work / "ci-1.pem"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    files = sign_files(
        build_files(
            read_repository(REPO / "policies", parameters=LOOPBACK_SITE), counter=1, commit="chart", group="gateways"
        ),
        SigningKey("ci-1", key),
    )
    return base64.b64encode(pack(files)).decode(), public


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    ca = TestCA(tmp_path / "ca")
    with running_kube_apiserver(tmp_path / "kube", ca, extra_args=["--enable-aggregator-routing=true"]) as api:
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig")


def test_helm_install_then_pods_are_judged_through_the_installed_webhook(
    cluster: tuple[Any, Path], tmp_path: Path
) -> None:
    api, kubeconfig = cluster
    bundle_b64, public = signed_policy_bundle(tmp_path)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"webhook": {"policyBundleBase64": bundle_b64}}))
    install = helm(
        "install",
        "edgetrust",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "-f",
        str(EDGE_SITE),
        "-f",
        str(values),
        "--set-file",
        f"webhook.bundleKeys.ci-1={public}",
        kubeconfig=kubeconfig,
    )
    assert "STATUS: deployed" in install.stdout
    assert "Admission webhook (2 replicas, failurePolicy Fail)" in install.stdout  # NOTES.txt

    with api.client() as client:
        secret = client.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/edgetrust-webhook-tls").json()
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (tmp_path / name).write_bytes(base64.b64decode(secret["data"][name]))
        (tmp_path / "tls.key").chmod(0o600)
        configmap = client.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/edgetrust-webhook-policy").json()
        (tmp_path / "bundle.tar.gz").write_bytes(base64.b64decode(configmap["binaryData"]["bundle.tar.gz"]))
        (tmp_path / "key-ci-1.pem").write_text(configmap["data"]["key-ci-1"])
        deployed = client.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments").json()["items"]
        assert {d["metadata"]["name"] for d in deployed} == {"edgetrust-webhook", "edgetrust-syncer"}

    with ExitStack() as stack:
        link = stack.enter_context(namespace_link("chart", subnet=214))
        address = link.peer_address
        opa_argv = link.exec_argv(
            str(peer("opa")), "run", "--server", "--v0-compatible", "--optimize-store-for-read-speed",
            "--addr", f"{address}:8181", "--log-level", "error",
        )  # fmt: skip
        stack.enter_context(
            running(
                opa_argv,
                ready=lambda: httpx.get(f"http://{address}:8181/health", timeout=1).status_code == 200,
                log=tmp_path / "opa.log",
            )
        )
        env = {
            **os.environ,
            "ADMISSION_LISTEN_HOST": address,
            "ADMISSION_LISTEN_PORT": "8443",
            "ADMISSION_TLS_CERT": str(tmp_path / "tls.crt"),
            "ADMISSION_TLS_KEY": str(tmp_path / "tls.key"),
            "ADMISSION_OPA_HOST": address,
            "ADMISSION_OPA_PORT": "8181",
            "ADMISSION_BUNDLE": str(tmp_path / "bundle.tar.gz"),
            "ADMISSION_BUNDLE_KEYS": f'["ci-1={tmp_path / "key-ci-1.pem"}"]',
            "ADMISSION_EXEMPT_NAMESPACES": f'["kube-system", "{NAMESPACE}"]',
        }
        webhook_argv = link.exec_argv(str(Path(sys.executable).parent / "edgetrust-admission"), "serve")
        # the chart's certificate names the Service, not this address: readiness is checked without the hostname
        ready = _ready_ignoring_hostname(address, tmp_path / "ca.crt")
        stack.enter_context(running(webhook_argv, ready=ready, log=tmp_path / "webhook.log", env=env))

        with api.client() as client:
            endpoints = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "edgetrust-webhook-netns",
                    "labels": {"kubernetes.io/service-name": "edgetrust-webhook"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
            }
            made = client.post(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices", json=endpoints)
            assert made.status_code == 201, made.text
            client.post("/api/v1/namespaces", json={"metadata": {"name": "shop"}})

            admitted = client.post("/api/v1/namespaces/shop/pods", json=pod("127.0.0.1:5000/app:v1", name="good"))
            assert admitted.status_code == 201, admitted.text
            refused = client.post(
                "/api/v1/namespaces/shop/pods",
                json=pod("127.0.0.1:5000/app:v1", name="bad", security={"privileged": True}),
            )
            assert refused.status_code == 403, refused.text
            assert "edgetrust denied Pod shop/bad" in refused.json()["message"]
            assert "[no_privileged] container c0 is privileged" in refused.json()["message"]
            # the release's own namespace is exempt: never sent to the webhook
            own = client.post(
                f"/api/v1/namespaces/{NAMESPACE}/pods",
                json=pod("127.0.0.1:5000/app:v1", name="own", security={"privileged": True}),
            )
            assert own.status_code == 201, own.text

    # the webhook is gone: the chart's failurePolicy Fail refuses what it would have judged
    with api.client() as client:
        closed = client.post("/api/v1/namespaces/shop/pods", json=pod("127.0.0.1:5000/app:v1", name="later"))
        assert closed.status_code >= 500 or closed.status_code == 403, closed.text
        assert "failed calling webhook" in closed.text
    uninstall = helm("uninstall", "edgetrust", "--namespace", NAMESPACE, kubeconfig=kubeconfig)
    assert "uninstalled" in uninstall.stdout


def _ready_ignoring_hostname(address: str, ca: Path) -> Callable[[], bool]:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False

    def ready() -> bool:
        return httpx.get(f"https://{address}:8443/readyz", verify=context, timeout=1).status_code == 200

    return ready
