"""The chart's cluster identity: the syncer and the webhook take their X.509-SVIDs from the node agent's Workload
API (a read-only hostPath of its socket directory), never from a Secret by default; a Secret only as the
explicit fallback for a cluster without the node agent; and neither is refused, saying how to give one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.chart.support import CHART, NAMESPACE, UserInputs, helm, make_user_inputs

pytestmark = pytest.mark.integration

EDGE_SITE = CHART / "examples" / "edge-site.yaml"
#: what a private key or a certificate looks like wherever it might hide in a value or a manifest
PEM_SECRET = re.compile(r"-----BEGIN (?:[A-Z ]*PRIVATE KEY|CERTIFICATE)-----")


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> UserInputs:
    return make_user_inputs(tmp_path_factory.mktemp("user"))


def rendered(*extra: str) -> list[dict[str, Any]]:
    done = helm("template", "edgetrust", str(CHART), "--namespace", NAMESPACE, "--kube-version", "v1.34.0", *extra)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pod_spec(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    spec: dict[str, Any] = found["spec"]["template"]["spec"]
    return spec


def test_no_default_value_holds_an_svid_or_a_key() -> None:
    values = (CHART / "values.yaml").read_text()
    assert not PEM_SECRET.search(values)
    defaults = yaml.safe_load(values)
    assert defaults["syncer"]["svidFallbackSecret"] == ""
    assert "svidSecret" not in defaults["syncer"]


def test_the_syncer_and_the_webhook_get_their_svids_from_the_workload_api(user: UserInputs) -> None:
    docs = rendered("-f", str(EDGE_SITE), *user.set_files())
    for name in ("edgetrust-syncer", "edgetrust-webhook"):
        spec = pod_spec(docs, name)
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SPIFFE_ENDPOINT_SOCKET"] == "unix:///run/spiffe/api.sock", name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["workload-api"]["hostPath"] == {"path": "/run/edgetrust/agent", "type": "Directory"}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "workload-api")
        assert mount == {"name": "workload-api", "mountPath": "/run/spiffe", "readOnly": True}
        assert "svid" not in volumes, name
        assert not any(a.startswith(("--svid=", "--svid-key=")) for a in container["args"]), name
    webhook = pod_spec(docs, "edgetrust-webhook")["containers"][0]
    assert "--hub=https://hub.retail.example:8443" in webhook["args"]
    assert "--ca-bundle=/etc/edgetrust/trust/bundle.pem" in webhook["args"]
    pod_name = next(e for e in webhook["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # no Secret the chart makes holds an SVID: only the webhook's serving certificate (its own, generated)
    secrets = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    assert secrets == ["edgetrust-webhook-tls"], secrets
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Deployment", "DaemonSet"):
            assert not PEM_SECRET.search(yaml.safe_dump(doc)), doc["metadata"]["name"]


def test_the_fallback_secret_renders_the_old_volume_and_flags_and_no_socket(user: UserInputs) -> None:
    docs = rendered(
        "-f", str(EDGE_SITE), *user.set_files(),
        "--set", "nodeAgent.enabled=false", "--set", "syncer.svidFallbackSecret=edgetrust-cluster-svid",
    )  # fmt: skip
    for name in ("edgetrust-syncer", "edgetrust-webhook"):
        spec = pod_spec(docs, name)
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["svid"]["secret"] == {"secretName": "edgetrust-cluster-svid", "defaultMode": 0o400}, name
        assert "workload-api" not in volumes, name
        assert "--svid=/etc/edgetrust/svid/tls.crt" in container["args"], name
        assert "--svid-key=/etc/edgetrust/svid/tls.key" in container["args"], name
        assert "SPIFFE_ENDPOINT_SOCKET" not in {e["name"] for e in container.get("env", [])}, name
    assert not any(d["kind"] == "DaemonSet" for d in docs)


def test_a_syncer_with_neither_the_node_agent_nor_the_fallback_is_refused(user: UserInputs) -> None:
    done = helm(
        "template", "edgetrust", str(CHART), "-f", str(EDGE_SITE), *user.set_files(),
        "--set", "nodeAgent.enabled=false",
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "- syncer: no identity for the cluster: enable the node agent" in done.stderr, done.stderr
    assert "trustctl fleet cluster add <cluster> --site <site>" in done.stderr
    assert "syncer.svidFallbackSecret=" in done.stderr


def test_the_webhook_alone_reports_nothing_and_mounts_no_socket() -> None:
    """A plain install (no syncer): no hub, no Workload API, exactly as before."""
    spec = pod_spec(rendered(), "edgetrust-webhook")
    container = spec["containers"][0]
    assert "env" not in container
    assert not any(a.startswith("--hub") for a in container["args"])
    assert {v["name"] for v in spec["volumes"]} == {"tls", "tmp"}


def test_notes_say_fleet_cluster_add_and_the_secret_only_as_the_fallback(user: UserInputs, tmp_path: Path) -> None:
    # helm renders NOTES.txt only on install, which needs a cluster: a copy of the chart renders it as a template
    chart = tmp_path / "edgetrust"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "notes.txt")
    (chart / "templates" / "notes-as-template.yaml").write_text('notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n')

    def notes(*extra: str) -> str:
        done = helm("template", "edgetrust", str(chart), "-f", str(EDGE_SITE), *user.set_files(), "-n", NAMESPACE,
                    "--show-only", "templates/notes-as-template.yaml", *extra)  # fmt: skip
        text: str = yaml.safe_load(done.stdout)["notes"]
        return text

    default = notes()
    assert (
        "trustctl fleet cluster add store-0042 --site store-0042 --namespace edgetrust-system --release edgetrust"
        in default
    )
    assert "create secret generic edgetrust-cluster-svid" not in default
    fallback = notes("--set", "nodeAgent.enabled=false", "--set", "syncer.svidFallbackSecret=cluster-svid")
    assert "kubectl -n edgetrust-system create secret generic cluster-svid" in fallback
    assert "nothing renews it" in fallback
    assert "fleet cluster add" not in fallback
