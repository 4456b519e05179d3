"""A webhook with Gatekeeper templates and constraints (from tests/data/gatekeeper) next to its own OPA."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from localpeers.opa_server import opa_server
from localpeers.tlsca import TestCA
from localpeers.webhook import RunningWebhook, policy_dir, running_webhook

REPO = Path(__file__).resolve().parents[3]
OWN = REPO / "tests" / "data" / "gatekeeper"


def constraint(kind: str, name: str, spec: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": "constraints.gatekeeper.sh/v1beta1", "kind": kind, "metadata": {"name": name}, "spec": spec}


POD = [{"apiGroups": [""], "kinds": ["Pod"]}]


def gatekeeper_dir(dest: Path, constraints: list[dict[str, object]]) -> Path:
    """The three templates of tests/data/gatekeeper (samples left out) and the given constraints."""
    dest.mkdir(parents=True, exist_ok=True)
    for folder in ("edgecontainerlimits", "edgerequiredlabels", "edgeuniquehost"):
        shutil.copy(OWN / folder / "template.yaml", dest / f"{folder}-template.yaml")
    (dest / "constraints.yaml").write_text(yaml.safe_dump_all(constraints))
    return dest


DEFAULT_CONSTRAINTS = [
    constraint(
        "K8sEdgeContainerLimits",
        "memory-limits",
        {"match": {"kinds": POD, "excludedNamespaces": ["kube-*"]}, "parameters": {"exemptImages": ["debug/"]}},
    ),
    constraint(
        "K8sEdgeRequiredLabels",
        "team-label",
        {"enforcementAction": "warn", "match": {"kinds": POD}, "parameters": {"labels": [{"key": "team"}]}},
    ),
    constraint(
        "K8sEdgeRequiredLabels",
        "cost-center",
        {"enforcementAction": "dryrun", "match": {"kinds": POD}, "parameters": {"labels": [{"key": "cost-center"}]}},
    ),
]


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def gk_webhook(tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[RunningWebhook]:
    work = tmp_path_factory.mktemp("gk-webhook")
    with (
        opa_server(work / "opa") as opa,
        running_webhook(
            work / "webhook",
            test_ca,
            policy_dir=policy_dir(work / "policies", rego=False),
            gatekeeper_dir=gatekeeper_dir(work / "gatekeeper", DEFAULT_CONSTRAINTS),
            opa_port=opa.port,
        ) as webhook,
    ):
        yield webhook
