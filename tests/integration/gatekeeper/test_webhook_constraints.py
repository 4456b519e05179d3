"""Gatekeeper constraints enforced by the webhook, through the real OPA, beside our own policies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from admission.errors import ConfigError
from admission.policy import PolicySet
from admission.server import build_controller
from admission.settings import AdmissionSettings
from localpeers.opa_server import opa_server
from localpeers.tlsca import TestCA
from localpeers.webhook import RunningWebhook, pod, policy_dir, review, running_webhook, workload
from tests.integration.gatekeeper.conftest import DEFAULT_CONSTRAINTS, POD, constraint, gatekeeper_dir

pytestmark = pytest.mark.integration


def unlimited_pod(**labels: str) -> dict[str, object]:
    obj = pod("registry.edge.example/app:1.0", name="app", labels=labels)
    del obj["spec"]["containers"][0]["resources"]
    return obj


def test_each_violation_names_its_constraint(gk_webhook: RunningWebhook) -> None:
    answer = gk_webhook.review(review(unlimited_pod(app="x"), namespace="shop"))
    assert answer["allowed"] is False
    assert "[memory-limits] container <c0> has no memory limit" in answer["status"]["message"]
    assert any(w.startswith("[team-label] Pod app must carry the label team") for w in answer["warnings"])
    assert answer["auditAnnotations"] == {"edgetrust.io/dryrun-cost-center": "Pod app must carry the label cost-center"}


def test_a_compliant_pod_is_admitted_cleanly(gk_webhook: RunningWebhook) -> None:
    obj = pod("registry.edge.example/app:1.0", name="app", labels={"team": "a", "cost-center": "b"})
    answer = gk_webhook.review(review(obj, namespace="shop"))
    assert answer == {"uid": answer["uid"], "allowed": True}


def test_match_criteria_apply(gk_webhook: RunningWebhook) -> None:
    labels = {"team": "a", "cost-center": "b"}
    assert gk_webhook.review(review(unlimited_pod(**labels), namespace="kube-edge"))["allowed"] is True
    exempt = unlimited_pod(**labels)
    exempt["spec"]["containers"][0]["image"] = "debug/shell:1"
    assert gk_webhook.review(review(exempt, namespace="shop"))["allowed"] is True


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"])
def test_workloads_are_judged_by_the_pod_they_would_create(gk_webhook: RunningWebhook, kind: str) -> None:
    answer = gk_webhook.review(
        review(workload(kind, unlimited_pod(team="a", **{"cost-center": "b"})), namespace="shop")
    )
    assert answer["allowed"] is False
    assert (
        f"[memory-limits] [Implied by {kind} expansion] container <c0> has no memory limit"
        in answer["status"]["message"]
    )


def test_constraint_for_a_kind_without_template_is_refused_at_load(tmp_path: Path) -> None:
    orphan = constraint("K8sNoSuchTemplate", "orphan", {"match": {"kinds": POD}})
    with pytest.raises(ConfigError, match="no ConstraintTemplate defines kind 'K8sNoSuchTemplate'"):
        PolicySet.load(policy_dir(tmp_path / "p", rego=False), gatekeeper_dir=gatekeeper_dir(tmp_path / "gk", [orphan]))


def test_parameters_breaking_the_schema_are_refused_with_the_field(tmp_path: Path) -> None:
    bad = constraint("K8sEdgeRequiredLabels", "bad", {"parameters": {"labels": [{"key": 7}]}})
    with pytest.raises(
        ConfigError, match=r"K8sEdgeRequiredLabels bad: spec.parameters.labels.0.key: 7 is not of type 'string'"
    ):
        PolicySet.load(policy_dir(tmp_path / "p", rego=False), gatekeeper_dir=gatekeeper_dir(tmp_path / "gk", [bad]))
    missing = constraint("K8sEdgeRequiredLabels", "bad", {"parameters": {"labels": [{"allowedRegex": "x"}]}})
    with pytest.raises(ConfigError, match="'key' is a required property"):
        PolicySet.load(
            policy_dir(tmp_path / "p2", rego=False), gatekeeper_dir=gatekeeper_dir(tmp_path / "gk2", [missing])
        )


def test_a_template_that_does_not_compile_stops_the_webhook_naming_it(tmp_path: Path) -> None:
    directory = gatekeeper_dir(tmp_path / "gk", DEFAULT_CONSTRAINTS)
    template = directory / "edgerequiredlabels-template.yaml"
    template.write_text(template.read_text().replace("required := input.parameters.labels[_]", "required := := x", 1))
    with opa_server(tmp_path / "opa") as opa:
        controller = build_controller(
            AdmissionSettings(
                policy_dir=policy_dir(tmp_path / "p", rego=False), gatekeeper_dir=directory, opa_port=opa.port
            )
        )

        async def start() -> None:
            try:
                await controller.start()  # what the webhook's start-up runs before it reports ready
            finally:
                await controller.close()

        with pytest.raises(
            ConfigError,
            match=r"ConstraintTemplate k8sedgerequiredlabels: OPA refused it: rego_parse_error \(line \d+\)",
        ):
            asyncio.run(start())


LOOPING_TEMPLATE = """apiVersion: templates.gatekeeper.sh/v1
kind: ConstraintTemplate
metadata:
  name: k8sslow
spec:
  crd:
    spec:
      names:
        kind: K8sSlow
  targets:
    - target: admission.k8s.gatekeeper.sh
      rego: |
        package k8sslow

        violation[{"msg": "slow"}] {
          count([1 | numbers.range(1, 3000)[_]; numbers.range(1, 3000)[_]]) < 0
        }
"""


def test_a_template_that_runs_long_is_cut_off_and_the_webhook_answers_in_time(tmp_path: Path, test_ca: TestCA) -> None:
    directory = gatekeeper_dir(tmp_path / "gk", [constraint("K8sSlow", "slow", {"match": {"kinds": POD}})])
    (directory / "slow-template.yaml").write_text(LOOPING_TEMPLATE)
    with (
        opa_server(tmp_path / "opa") as opa,
        running_webhook(
            tmp_path / "webhook",
            test_ca,
            policy_dir=policy_dir(tmp_path / "p", rego=False),
            gatekeeper_dir=directory,
            opa_port=opa.port,
            opa_timeout_s=0.3,
        ) as webhook,
    ):
        answer = webhook.review(review(pod("registry.edge.example/app:1.0"), namespace="shop"))
    assert answer["allowed"] is False
    assert (
        "[slow] undecided, failing closed: OPA could not decide: OPA did not answer within 0.3s"
        in answer["status"]["message"]
    )
