"""The Helm chart with the real helm (pinned peer): lint --strict, every manifest of every example against the
Kubernetes schemas of each supported version, wrong values refused by name, missing ones refused with the way to
give them, the hub's certificate checked by a real trustd against the URL the node agent is given, and the
README's `helm install` into a real kube-apiserver after which pods are admitted or refused through the webhook
configuration the chart made.

There is no kubelet here, so the chart's webhook pods stay Pending. The webhook process runs instead in a
network namespace (a non-loopback address the API server may route to), serving with the certificate the
chart generated (read back from its Secret), behind the chart's own Service: an EndpointSlice points the
Service at it, and kube-apiserver runs with --enable-aggregator-routing so that it dials the endpoint, as it
would a pod, verifying the chart's caBundle against <service>.<namespace>.svc.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml

from localpeers.hub import free_port
from localpeers.kube import running_kube_apiserver
from localpeers.peers import peer
from localpeers.processes import running
from localpeers.tlsca import TestCA
from localpeers.webhook import pod
from tests.integration.chart.support import (
    CHART,
    NAMESPACE,
    UserInputs,
    helm,
    make_user_inputs,
    readme_blocks,
    run_readme_block,
)
from tests.support.netns import namespace_link

pytestmark = pytest.mark.integration

EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
EDGE_SITE = CHART / "examples" / "edge-site.yaml"
HUB_EXAMPLE = CHART / "examples" / "hub-and-node-agent.yaml"
#: the Kubernetes versions we test (webhook.matchConditions need 1.30), oldest, middle and newest
VERSIONS = ("1.30.0", "1.34.0", "1.37.0")
#: cert-manager's kinds are CRDs, not in the Kubernetes schemas; they are checked for shape by lint only
CRD_GROUPS = ("cert-manager.io/",)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> UserInputs:
    return make_user_inputs(tmp_path_factory.mktemp("user"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_lint_strict(example: Path, user: UserInputs) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(example), *user.set_files(), "--kube-version", "v1.30.0")
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
def test_every_manifest_validates_against_the_kubernetes_schemas(example: Path, version: str, user: UserInputs) -> None:
    validated, crds = [], []
    docs = rendered(example, version, *user.set_files())
    for doc in docs:
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
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, f"{doc['kind']} {container['name']}"
            assert security.get("readOnlyRootFilesystem") is True, f"{doc['kind']} {container['name']}"
            assert security.get("capabilities", {}).get("drop") == ["ALL"]
            assert "requests" in container.get("resources", {}), "sized for small nodes: requests are set"


def test_the_webhook_configuration_exempts_system_namespaces_and_takes_its_settings(user: UserInputs) -> None:
    docs = rendered(
        EDGE_SITE,
        VERSIONS[-1],
        *user.set_files(),
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
    rules = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "edgetrust-syncer")["rules"]
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
        (["webhook.policyBundleConfigMap=Not_A_Name"], "at '/webhook/policyBundleConfigMap'"),
        (["nodeAgent.enabled=true,nodeAgent.hub=hub:8443"], "at '/nodeAgent/hub'"),
        (["hub.dnsNames={bad name}"], "at '/hub/dnsNames/0'"),
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
    done = helm(
        "template",
        "t",
        str(CHART),
        "-f",
        str(HUB_EXAMPLE),
        "--set",
        "hub.storeSecret=",
        "--set",
        "hub.replicas=2",
        "--kube-version",
        "v1.37.0",
        check=False,
    )
    assert done.returncode != 0
    assert "hub.replicas > 1 needs hub.storeSecret" in done.stderr


def test_the_defaults_install_the_webhook_alone_enforcing_the_library_in_its_image() -> None:
    """No values at all: lint --strict passes and the webhook runs the default library (no bundle, no key to
    trust); the syncer and the node agent are off until given theirs."""
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART)).stdout
    done = helm("template", "edgetrust", str(CHART), "--namespace", NAMESPACE)
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"edgetrust-webhook"}
    assert not [d for d in docs if d["kind"] in ("DaemonSet", "StatefulSet")]
    spec = deployments["edgetrust-webhook"]["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert "--default-library" in args
    assert not [a for a in args if a.startswith(("--bundle", "--parameters", "--registry-ca-file"))], args
    assert {v["name"] for v in spec["volumes"]} == {"tls", "tmp"}
    for doc in docs:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def test_the_sites_parameters_and_registry_ca_reach_the_webhook() -> None:
    ca = "-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n"
    done = helm(
        "template", "edgetrust", str(CHART), "--namespace", NAMESPACE,
        "--set", "webhook.parameters.allowed_repos.repos={registry.retail.example/}",
        "--set", f"webhook.registryCA={ca}",
    )  # fmt: skip
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    webhook = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    args = webhook["containers"][0]["args"]
    assert {"--default-library", "--parameters=/etc/edgetrust/parameters/parameters.yaml"} <= set(args)
    assert "--registry-ca-file=/etc/edgetrust/registry-ca/ca.pem" in args
    policy = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "edgetrust-webhook-policy")
    assert yaml.safe_load(policy["data"]["parameters.yaml"]) == {
        "allowed_repos": {"repos": ["registry.retail.example/"]}
    }
    assert policy["data"]["registry-ca.pem"] == ca.replace("\\n", "\n")
    mounts = {m["name"]: m["mountPath"] for m in webhook["containers"][0]["volumeMounts"]}
    assert mounts["parameters"] == "/etc/edgetrust/parameters"
    assert mounts["registry-ca"] == "/etc/edgetrust/registry-ca"


def test_the_checksum_annotation_is_a_string_even_when_its_hex_is_all_digits() -> None:
    # this registry CA's checksum is 3218943251514029: unquoted, YAML reads a number, which the API server refuses
    # in annotations ("cannot unmarshal number"); a chart_real install met one with random keys
    done = helm(
        "template", "edgetrust", str(CHART), "--namespace", NAMESPACE,
        "--set", "webhook.registryCA=-----BEGIN CERTIFICATE-----39",
    )  # fmt: skip
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    webhook = next(d for d in docs if d["kind"] == "Deployment")
    assert webhook["spec"]["template"]["metadata"]["annotations"] == {"checksum/policy": "3218943251514029"}


def test_a_bundle_without_its_keys_and_a_syncer_without_its_values_say_how_to_give_each() -> None:
    """Fail closed where there is something to verify: a bundle the webhook could not verify (it would not start,
    and failurePolicy Fail would refuse every pod), a syncer with nothing to trust; every missing value named."""
    done = helm(
        "template", "edgetrust", str(CHART),
        "--set", "webhook.policyBundleBase64=AAAA", "--set", "syncer.enabled=true",
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    for line in (
        "- webhook.bundleKeys: a policy bundle is given",
        "--set-file webhook.bundleKeys.ci-1=ci-1.pub",
        "- syncer.verificationKeys: ",
        "--set-file syncer.verificationKeys.ci-1=ci-1.pub",
        "- syncer.hub: ",
        "- syncer.cluster: ",
        "- syncer.group: ",
        "- syncer.siteClass: ",
    ):
        assert line in done.stderr, done.stderr
    assert "kubeVersion" not in done.stderr  # no --kube-version needed
    configmap = helm(
        "template", "edgetrust", str(CHART), "--set", "webhook.policyBundleConfigMap=site-policy", check=False
    )
    assert "- webhook.bundleKeys: a policy bundle is given" in configmap.stderr


@pytest.mark.parametrize(
    ("values", "message", "absent"),
    [
        (["--set", "webhook.policyBundleBase64=AAAA", "--set", "webhook.policyBundleConfigMap=p"], "give one", "keys"),
        (["--set", "webhook.enabled=false", "--set", "syncer.enabled=false", "--set", "hub.enabled=true"],
         "- hub.trustDomain: your SPIFFE trust domain", "webhook"),
        (["--set", "webhook.enabled=false", "--set", "nodeAgent.enabled=true", "--set", "nodeAgent.hub="],
         "- nodeAgent.hub: trustd's URL: --set nodeAgent.hub=https://", "syncer"),
    ],
)  # fmt: skip
def test_each_missing_value_is_named_alone(user: UserInputs, values: list[str], message: str, absent: str) -> None:
    keys = ["--set-file", f"webhook.bundleKeys.ci-1={user.public_key}"]
    keys += ["--set-file", f"syncer.verificationKeys.ci-1={user.public_key}"]
    done = helm("template", "t", str(CHART), "-f", str(EDGE_SITE), *keys, *values, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert f"- {absent}" not in done.stderr, done.stderr


def test_match_conditions_say_which_kubernetes_they_need(user: UserInputs) -> None:
    pinning = CHART / "examples" / "cert-manager-pinning.yaml"
    argv = ["template", "t", str(CHART), "-f", str(pinning), *user.set_files()]
    too_old = helm(*argv, "--kube-version", "v1.29.0", check=False)
    assert too_old.returncode != 0
    assert "webhook.matchConditions: need Kubernetes >= 1.30, and this is v1.29.0" in too_old.stderr
    assert helm(*argv, "--kube-version", "v1.30.0").returncode == 0


def test_the_bundle_as_base64_text_wrapped_or_not_is_the_bundle(user: UserInputs) -> None:
    docs = rendered(EDGE_SITE, VERSIONS[-1], *user.set_files())
    policy = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "edgetrust-webhook-policy")
    assert "\n" in user.bundle_b64.read_text().strip()  # as `base64` writes it: wrapped at 76
    assert base64.b64decode(policy["binaryData"]["bundle.tar.gz"], validate=True) == user.bundle
    assert policy["data"]["key-ci-1"] == user.public_key.read_text()


def test_the_bundle_from_a_configmap_of_the_users(user: UserInputs) -> None:
    keys = user.set_files()[2:]  # the keys, not the inline bundle
    docs = rendered(EDGE_SITE, VERSIONS[-1], *keys, "--set", "webhook.policyBundleConfigMap=site-policy")
    webhook = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "edgetrust-webhook")
    volumes = {v["name"]: v for v in webhook["spec"]["template"]["spec"]["volumes"]}
    assert volumes["bundle"]["configMap"] == {
        "name": "site-policy",
        "items": [{"key": "bundle.tar.gz", "path": "bundle.tar.gz"}],
    }
    policy = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "edgetrust-webhook-policy")
    assert "binaryData" not in policy
    assert volumes["bundle-keys"]["configMap"]["name"] == "edgetrust-webhook-policy"


def test_the_syncer_and_the_node_agent_trust_the_hub_through_one_secret(user: UserInputs) -> None:
    site = rendered(EDGE_SITE, VERSIONS[-1], *user.set_files())
    hub = rendered(HUB_EXAMPLE, VERSIONS[-1])
    syncer = next(d for d in site if d["kind"] == "Deployment" and d["metadata"]["name"] == "edgetrust-syncer")
    agent = next(d for d in hub if d["kind"] == "DaemonSet")
    for workload, flag in ((syncer, "--ca-bundle=/etc/edgetrust/trust/bundle.pem"), (agent, None)):
        spec = workload["spec"]["template"]["spec"]
        trust = next(v for v in spec["volumes"] if v["name"] == "trust")
        assert trust["secret"] == {
            "secretName": "edgetrust-trust-bundle",
            "items": [{"key": "bundle.pem", "path": "bundle.pem"}],
        }
        if flag:
            assert flag in spec["containers"][0]["args"]
    enroll = agent["spec"]["template"]["spec"]["initContainers"][0]["args"][0]
    assert "--ca-bundle /etc/edgetrust/trust/bundle.pem" in enroll
    assert "--server https://edgetrust-hub.edgetrust-system.svc:8443 " in enroll


def test_the_hubs_certificate_names_the_url_the_node_agent_is_given(tmp_path: Path) -> None:
    """The hub example's trustd, run as its StatefulSet runs it (its args and env; loopback, a free port): the
    node agent's default hub URL verifies against `trustd bundle --pem`, as NOTES.txt makes the Secret."""
    port = free_port()
    docs = rendered(HUB_EXAMPLE, VERSIONS[-1], "--set", "hub.storeSecret=", "--set", "hub.replicas=1",
                    "--set", f"hub.port={port}")  # fmt: skip
    agent = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    hub_url = urlsplit(next(a for a in agent["args"] if a.startswith("--hub="))[len("--hub=") :])
    assert (hub_url.hostname, hub_url.port) == ("edgetrust-hub.edgetrust-system.svc", port)

    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    trustd = statefulset["spec"]["template"]["spec"]["containers"][0]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    mounts = {
        "/var/lib/edgetrust/trustd": tmp_path / "data",
        "/etc/edgetrust/config": tmp_path / "config",
        "/etc/edgetrust/ek-roots": tmp_path / "ek-roots",
        "/etc/edgetrust/policy-keys": tmp_path / "policy-keys",
    }
    for directory in mounts.values():
        directory.mkdir()
    (mounts["/etc/edgetrust/config"] / "reference-values.yaml").write_text(config["data"]["reference-values.yaml"])
    (mounts["/etc/edgetrust/ek-roots"] / "root.pem").write_bytes(TestCA(tmp_path / "ek-ca").ca_file.read_bytes())

    def local(arg: str) -> str:
        if arg == "--host=0.0.0.0":
            return "--host=127.0.0.1"  # loopback only here
        for inside, outside in mounts.items():
            arg = arg.replace(inside, str(outside))
        return arg

    (init,) = statefulset["spec"]["template"]["spec"]["initContainers"]  # as the pod does: the trust material first
    init_argv = [str(Path(sys.executable).parent / init["command"][0]), *init["command"][1:]]
    subprocess.run([*init_argv, *(local(a) for a in init["args"])], check=True, capture_output=True, timeout=60)
    argv = [str(Path(sys.executable).parent / trustd["command"][0]), *trustd["command"][1:]]
    argv += [local(a) for a in trustd["args"]]
    env = {**os.environ, **{e["name"]: e["value"] for e in trustd["env"] if "value" in e}}
    ca = mounts["/var/lib/edgetrust/trustd"] / "ca" / "ca.crt"
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE

    def ready() -> bool:
        return ca.exists() and httpx.get(f"https://127.0.0.1:{port}/healthz", verify=insecure).status_code == 200

    with running(argv, ready=ready, log=tmp_path / "trustd.log", env=env):
        bundle = tmp_path / "bundle.pem"
        trustd_cli = str(Path(sys.executable).parent / "trustd")
        made = subprocess.run(
            [trustd_cli, "bundle", "--pem", "--data-dir", str(mounts["/var/lib/edgetrust/trustd"]),
             "--trust-domain", "retail.example"],
            capture_output=True, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        bundle.write_bytes(made.stdout)
        verifying = ssl.create_default_context(cafile=str(bundle))
        for name in (hub_url.hostname, "hub.retail.example", "edgetrust-hub.edgetrust-system.svc.cluster.local"):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                verifying.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.version() is not None
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
        ):
            verifying.wrap_socket(raw, server_hostname="trustd.edgetrust-system.svc")  # the old example's name


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    ca = TestCA(tmp_path / "ca")
    with running_kube_apiserver(tmp_path / "kube", ca, extra_args=["--enable-aggregator-routing=true"]) as api:
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig")


def test_helm_install_then_pods_are_judged_through_the_installed_webhook(
    cluster: tuple[Any, Path], tmp_path: Path
) -> None:
    api, kubeconfig = cluster
    # the README, as written: the key, the bundle and the site file, then its `helm install` line
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    blocks = readme_blocks()
    install_block = next(b for b in blocks if b.startswith("helm install") and "site.yaml" in b)
    for block in blocks[: blocks.index(install_block)]:
        if not block.startswith(("helm template", "helm install")):  # the webhook-alone install: chart_real/
            run_readme_block(block, user_dir)
    # the same line with the bundle but not its key: refused before anything is made (no webhook that could not
    # verify its bundle, and so could not start, while failurePolicy Fail refuses every pod); following the syncer,
    # the webhook takes the syncer's keys, so the key is gone only when both lists are empty
    without_key = install_block.replace(" \\\n  --set-file syncer.verificationKeys.ci-1=ci-1.pub", "")
    assert without_key != install_block
    with pytest.raises(AssertionError, match=re.escape("- webhook.bundleKeys: a policy bundle is given")):
        run_readme_block(without_key, user_dir, kubeconfig=kubeconfig)
    with api.client() as client:
        hooks = client.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations").json()
        assert hooks["items"] == []
    assert helm("list", "--all-namespaces", "-q", kubeconfig=kubeconfig).stdout.strip() == ""

    install = run_readme_block(install_block, user_dir, kubeconfig=kubeconfig)
    assert "STATUS: deployed" in install.stdout
    assert "Admission webhook (2 replicas, failurePolicy Fail)" in install.stdout  # NOTES.txt
    bundle_secret = f"kubectl -n {NAMESPACE} create secret generic edgetrust-trust-bundle --from-file=bundle.pem="
    assert bundle_secret in install.stdout

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

            admitted = client.post(
                "/api/v1/namespaces/shop/pods", json=pod("registry.retail.example/app:v1", name="good")
            )
            assert admitted.status_code == 201, admitted.text
            refused = client.post(
                "/api/v1/namespaces/shop/pods",
                json=pod("registry.retail.example/app:v1", name="bad", security={"privileged": True}),
            )
            assert refused.status_code == 403, refused.text
            assert "edgetrust denied Pod shop/bad" in refused.json()["message"]
            assert "[no_privileged] container c0 is privileged" in refused.json()["message"]
            # the release's own namespace is exempt: never sent to the webhook
            own = client.post(
                f"/api/v1/namespaces/{NAMESPACE}/pods",
                json=pod("registry.retail.example/app:v1", name="own", security={"privileged": True}),
            )
            assert own.status_code == 201, own.text

    # the webhook is gone: the chart's failurePolicy Fail refuses what it would have judged
    with api.client() as client:
        closed = client.post("/api/v1/namespaces/shop/pods", json=pod("registry.retail.example/app:v1", name="later"))
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
