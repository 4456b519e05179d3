"""The hub as replicas in the chart (issue 17): with its keys on a PKCS#11 token it is a Deployment of N replicas
with the store URL from a Secret, the PIN from a Secret mounted as a file, and no state volume; the trust
material is made once by a pre-install Job, never by the replicas. Without a token it stays one StatefulSet
replica whose init container makes the root on its own volume. Rendered with the real helm."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.integration.chart.support import CHART, helm

pytestmark = pytest.mark.integration

HUB_EXAMPLE = CHART / "examples" / "hub-and-node-agent.yaml"
TOKEN = ("hub.pkcs11.module=/usr/lib/softhsm/libsofthsm2.so", "hub.pkcs11.pinSecret=hub-pin")


def _render(*values: str, check: bool = True) -> Any:
    argv = ["template", "t", str(CHART), "-f", str(HUB_EXAMPLE), "--kube-version", "v1.37.0"]
    for value in values:
        argv += ["--set", value]
    done = helm(*argv, check=check)
    return done if not check else [d for d in yaml.safe_load_all(done.stdout) if d]


def _hub_workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds = ("Deployment", "StatefulSet", "Job")
    return [d for d in docs if d["kind"] in kinds and d["metadata"]["name"].startswith("t-edgetrust-hub")]


def test_three_replicas_on_a_token_are_a_deployment_without_state() -> None:
    docs = _render("hub.replicas=3", *TOKEN)
    (deployment, job) = sorted(_hub_workloads(docs), key=lambda d: str(d["kind"]))
    assert (deployment["kind"], job["kind"]) == ("Deployment", "Job")
    assert deployment["spec"]["replicas"] == 3
    assert "volumeClaimTemplates" not in deployment["spec"]
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "PersistentVolumeClaim")]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}  # nothing on it outlives the pod
    assert volumes["pkcs11-pin"]["secret"]["secretName"] == "hub-pin"
    assert volumes["pkcs11-pin"]["secret"]["defaultMode"] == 0o400
    assert "initContainers" not in pod  # a replica never makes trust material
    (trustd,) = pod["containers"]
    assert "--pkcs11-module=/usr/lib/softhsm/libsofthsm2.so" in trustd["args"]
    assert "--pkcs11-pin-file=/etc/edgetrust/pkcs11/pin" in trustd["args"]
    env = {e["name"]: e for e in trustd["env"]}
    assert env["TRUSTD_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "trustd-store", "key": "url"}
    assert not [e for e in trustd["env"] if "PIN" in e["name"]]  # the PIN is a file only
    mounts = {m["name"]: m for m in trustd["volumeMounts"]}
    assert mounts["pkcs11-pin"] == {"name": "pkcs11-pin", "mountPath": "/etc/edgetrust/pkcs11", "readOnly": True}
    # the store's CA (the URL's sslrootcert), from the store Secret when it holds one; the URL stays an env var
    assert mounts["store-ca"] == {"name": "store-ca", "mountPath": "/etc/edgetrust/store", "readOnly": True}
    assert volumes["store-ca"]["secret"] == {
        "secretName": "trustd-store",
        "optional": True,
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    # the trust material: once per install, by a hook Job, before any replica starts
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install"
    (init,) = job["spec"]["template"]["spec"]["containers"]
    assert init["command"] == ["trustd", "ca", "init", "--if-absent"]
    assert "--pkcs11-pin-file=/etc/edgetrust/pkcs11/pin" in init["args"]


def test_no_init_job_when_told_the_operator_made_the_trust_material() -> None:
    docs = _render("hub.replicas=3", "hub.trust.init=false", *TOKEN)
    assert [d["kind"] for d in _hub_workloads(docs)] == ["Deployment"]


def test_the_modules_own_volumes_and_env_reach_the_replicas_and_the_job() -> None:
    docs = _render(
        "hub.replicas=2",
        *TOKEN,
        "hub.pkcs11.env[0].name=SOFTHSM2_CONF",
        "hub.pkcs11.env[0].value=/etc/softhsm/softhsm2.conf",
        "hub.pkcs11.volumes[0].name=hsm-config",
        "hub.pkcs11.volumes[0].configMap.name=hsm",
        "hub.pkcs11.volumeMounts[0].name=hsm-config",
        "hub.pkcs11.volumeMounts[0].mountPath=/etc/softhsm",
    )
    for workload in _hub_workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert {"name": "SOFTHSM2_CONF", "value": "/etc/softhsm/softhsm2.conf"} in container["env"], workload["kind"]
        assert {"name": "hsm-config", "mountPath": "/etc/softhsm"} in container["volumeMounts"]
        assert {"name": "hsm-config", "configMap": {"name": "hsm"}} in pod["volumes"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["hub.replicas=2"], "hub.replicas > 1 needs hub.pkcs11.module"),
        (["hub.replicas=2", "hub.storeSecret=", *TOKEN], "hub.replicas > 1 needs hub.storeSecret"),
        (["hub.storeSecret=", *TOKEN], "it needs hub.storeSecret"),
        (["hub.replicas=2", TOKEN[0]], "needs hub.pkcs11.pinSecret"),
    ],
)
def test_replicas_without_one_store_one_token_or_a_pin_are_refused(values: list[str], message: str) -> None:
    done = _render(*values, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_one_replica_without_a_token_makes_its_root_once_on_its_own_volume() -> None:
    docs = _render("hub.replicas=1")
    (statefulset,) = _hub_workloads(docs)
    assert statefulset["kind"] == "StatefulSet"
    (init,) = statefulset["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == ["trustd", "ca", "init", "--if-absent"]
    assert init["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/edgetrust/trustd"}]
    docs = _render("hub.replicas=1", "hub.trust.init=false")
    (statefulset,) = _hub_workloads(docs)
    assert "initContainers" not in statefulset["spec"]["template"]["spec"]


def test_workers_reach_each_replica_and_need_the_shared_store() -> None:
    docs = _render("hub.replicas=3", "hub.workers=2", *TOKEN)
    (deployment, _job) = sorted(_hub_workloads(docs), key=lambda d: str(d["kind"]))
    (trustd,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in trustd["env"]}["TRUSTD_WORKERS"] == "2"
    one = _render("hub.replicas=3", *TOKEN)
    (deployment, _job) = sorted(_hub_workloads(one), key=lambda d: str(d["kind"]))
    assert "TRUSTD_WORKERS" not in {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    refused = _render("hub.workers=2", "hub.storeSecret=", check=False)
    assert refused.returncode != 0
    assert "hub.workers > 1 needs hub.storeSecret" in refused.stderr
