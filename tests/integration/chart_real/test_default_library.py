"""`helm install` with no values on the real node: the webhook alone, 2 replicas with their OPA sidecars, Ready
with the chart's securityContext as shipped, enforcing the default library in its image. Pods go through the
API server, which calls the webhook through the Service its ValidatingWebhookConfiguration names.

The install is the README's line (charts/edgetrust/README.md, "The webhook alone") plus the values of the
images `make images` built for this commit (imported into the node, pullPolicy Never): nothing else.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

from localpeers.admissionrelease import (
    Release,
    drop_namespace,
    fresh_namespace,
    installed,
    submit,
    wait_running,
    workload_pod,
)
from localpeers.chartrelease import ClusterImages, helm
from localpeers.nodeimages import TOOLS_IMAGE
from localpeers.realcluster import RealCluster
from tests.integration.chart.support import readme_blocks

pytestmark = pytest.mark.integration

RELEASE, NAMESPACE = "edgetrust", "edgetrust-system"


def _readme_line() -> list[str]:
    line = next(b for b in readme_blocks() if b.startswith("helm install") and "site.yaml" not in b)
    return shlex.split(line)


@pytest.fixture(scope="module")
def release(
    real_cluster: RealCluster, cluster_images: ClusterImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    words = _readme_line()
    assert words[:3] == ["helm", "install", RELEASE]
    assert words[4:] == ["--namespace", NAMESPACE, "--create-namespace"]  # no value of the user's at all
    with installed(real_cluster, cluster_images, RELEASE, NAMESPACE, {}, work=tmp_path_factory.mktemp("rel")) as done:
        print(f"\ninstall_to_ready_s (webhook, default library): {done.install_to_ready_s:.1f}", flush=True)
        yield done


@pytest.fixture
def namespace(real_cluster: RealCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = fresh_namespace(real_cluster, f"adm-{request.node.name[5:30].replace('_', '-').strip('-')}")
    yield name
    drop_namespace(real_cluster, name)


def test_two_replicas_each_with_its_opa_sidecar_ready_with_the_shipped_security_context(release: Release) -> None:
    pods = release.webhook_pods()
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
        assert set(statuses) == {"webhook", "opa"}
        assert all(c["ready"] and c["restartCount"] == 0 for c in statuses.values()), statuses
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 65532
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, container["name"]
            assert security["readOnlyRootFilesystem"] is True, container["name"]
            assert security["allowPrivilegeEscalation"] is False, container["name"]
            assert security["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        args = spec["containers"][0]["args"]
        assert "--default-library" in args
        assert not [a for a in args if a.startswith("--bundle")], args


def test_the_processes_really_run_unprivileged_on_a_read_only_root(release: Release) -> None:
    pod = release.webhook_pods()[0]["metadata"]["name"]
    exec_ = ("exec", "-n", release.namespace, pod, "-c", "webhook", "--")
    status = release.cluster.kubectl(*exec_, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[:2] == ["65532", "65532"]
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    wrote = release.cluster.kubectl(*exec_, "touch", "/usr/local/x", check=False)
    assert wrote.returncode != 0
    assert "Read-only file system" in wrote.stderr


def test_the_webhook_is_reached_through_its_service(release: Release) -> None:
    cluster = release.cluster
    hook = json.loads(cluster.kubectl("get", "validatingwebhookconfiguration", release.service, "-o", "json").stdout)
    reference = hook["webhooks"][0]["clientConfig"]["service"]
    assert reference == {"name": release.service, "namespace": NAMESPACE, "path": "/validate", "port": 443}
    assert hook["webhooks"][0]["failurePolicy"] == "Fail"
    slices = json.loads(
        cluster.kubectl(
            "get",
            "endpointslices",
            "-n",
            NAMESPACE,
            "-l",
            f"kubernetes.io/service-name={release.service}",
            "-o",
            "json",
        ).stdout
    )
    ready = sorted(
        address
        for item in slices["items"]
        for endpoint in item.get("endpoints") or []
        if endpoint.get("conditions", {}).get("ready")
        for address in endpoint["addresses"]
    )
    assert ready == sorted(p["status"]["podIP"] for p in release.webhook_pods())


def test_a_privileged_pod_is_refused_with_no_privileged_s_message(release: Release, namespace: str) -> None:
    refused = submit(
        release.cluster, workload_pod("privileged", namespace, TOOLS_IMAGE, securityContext={"privileged": True})
    )
    assert refused.returncode != 0
    assert 'admission webhook "validate.edgetrust.io" denied the request' in refused.stderr, refused.stderr
    assert f"edgetrust denied Pod {namespace}/privileged: [no_privileged] container main is privileged" in (
        refused.stderr
    )
    gone = release.cluster.kubectl("get", "pod", "privileged", "-n", namespace, check=False)
    assert "NotFound" in gone.stderr


def test_an_untagged_image_is_refused_and_host_namespaces_too(release: Release, namespace: str) -> None:
    untagged = submit(release.cluster, workload_pod("untagged", namespace, "edgetrust.local/tools"))
    assert "[disallow_latest_tag]" in untagged.stderr, untagged.stderr
    host = workload_pod("hostnet", namespace, TOOLS_IMAGE)
    host["spec"]["hostNetwork"] = True
    refused = submit(release.cluster, host)
    assert "[no_host_namespaces]" in refused.stderr, refused.stderr


def test_a_compliant_pod_reaches_running_with_the_library_s_warnings(release: Release, namespace: str) -> None:
    manifest: dict[str, Any] = workload_pod("compliant", namespace, TOOLS_IMAGE, command=["sleep", "3600"])
    admitted = submit(release.cluster, manifest)
    assert admitted.returncode == 0, admitted.stderr
    # warn-mode policies answer too: the review went through the webhook, not around it
    assert "[run_as_non_root]" in admitted.stderr, admitted.stderr
    running = wait_running(release.cluster, namespace, "compliant")
    assert running["spec"]["nodeName"] == release.cluster.node_name


def test_the_webhook_and_the_notes_say_which_library_policy_is_left_out(release: Release) -> None:
    logs = release.logs()
    assert "allowed_repos is not enforced" in logs, logs[-3000:]
    notes = helm("get", "notes", RELEASE, "--namespace", NAMESPACE, kubeconfig=release.cluster.kubeconfig).stdout
    assert "Policies: the default library in the image (policies/admission)." in notes, notes
    assert "allowed_repos is not enforced until" in notes, notes


def test_exempt_namespaces_are_never_sent(release: Release) -> None:
    hook = json.loads(
        release.cluster.kubectl("get", "validatingwebhookconfiguration", release.service, "-o", "json").stdout
    )
    selector = hook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]
    assert selector["operator"] == "NotIn"
    assert set(selector["values"]) == {"kube-system", NAMESPACE}
