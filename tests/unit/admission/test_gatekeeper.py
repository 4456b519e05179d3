"""Gatekeeper templates, constraints and match semantics, without OPA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from admission.errors import ConfigError
from admission.modes import Mode
from admission.rego.gatekeeper import build_set, load_documents, parse_template
from admission.rego.inventory import Inventory, InventoryError
from admission.rego.match import expand_to_pod, parse_match
from admission.rego.suites import check_assertions, review_of

OWN = Path(__file__).resolve().parents[2] / "data" / "gatekeeper"


def template_doc(name: str = "edgecontainerlimits") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((OWN / name / "template.yaml").read_text())
    return doc


def test_template_rego_and_libs_move_into_the_kinds_namespace() -> None:
    template = parse_template(template_doc(), "t.yaml")
    assert template.kind == "K8sEdgeContainerLimits"
    main, lib = template.modules.values()
    assert "package templates.K8sEdgeContainerLimits" in main
    assert "import data.libs.K8sEdgeContainerLimits.lib.exemptions.is_exempt" in main
    assert "package libs.K8sEdgeContainerLimits.lib.exemptions" in lib


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d["metadata"].update(name="other"), "must be the lowercase of its kind"),
        (lambda d: d["spec"]["crd"]["spec"]["names"].update(kind="bad kind"), "is not a Kubernetes kind name"),
        (lambda d: d["spec"]["targets"][0].update(target="other.target"), "is not admission.k8s.gatekeeper.sh"),
        (lambda d: d["spec"]["targets"][0]["code"][0]["source"].update(rego=""), "no Rego source"),
        (lambda d: d["spec"]["targets"][0]["code"][0]["source"].update(libs=["package mylib\n"]), "under lib."),
        (lambda d: d["spec"].pop("crd"), "spec.crd.spec.names.kind is missing"),
    ],
)
def test_template_mistakes_are_named(mutate: Any, reason: str) -> None:
    document = template_doc()
    mutate(document)
    with pytest.raises(ConfigError, match=reason):
        parse_template(document, "t.yaml")


def test_enforcement_actions_map_to_modes() -> None:
    documents = load_documents([OWN / "edgerequiredlabels" / "template.yaml"])
    for action, mode in (("deny", Mode.ENFORCE), ("warn", Mode.WARN), ("dryrun", Mode.DRYRUN)):
        constraint = {
            "apiVersion": "constraints.gatekeeper.sh/v1beta1",
            "kind": "K8sEdgeRequiredLabels",
            "metadata": {"name": f"c-{action}"},
            "spec": {"enforcementAction": action, "parameters": {"labels": [{"key": "a"}]}},
        }
        assert build_set([*documents, (constraint, "c.yaml")]).constraints[0].mode is mode
    constraint["spec"]["enforcementAction"] = "scream"  # type: ignore[index]
    with pytest.raises(ConfigError, match="enforcementAction 'scream'"):
        build_set([*documents, (constraint, "c.yaml")])


def review(
    kind: str, *, namespace: str = "", group: str = "", labels: dict[str, str] | None = None, name: str = "x"
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "kind": {"group": group, "kind": kind},
        "namespace": namespace,
        "name": name,
        "object": {"metadata": metadata},
    }


def no_labels(_: str) -> None:
    return None


def test_kinds_scope_and_namespaces() -> None:
    match = parse_match({"kinds": [{"apiGroups": ["apps"], "kinds": ["Deployment"]}], "namespaces": ["shop-*"]})
    assert match.matches(review("Deployment", group="apps", namespace="shop-lyon"), no_labels)
    assert not match.matches(review("Deployment", group="apps", namespace="depot"), no_labels)
    assert not match.matches(review("Deployment", group="", namespace="shop-lyon"), no_labels)
    excluded = parse_match({"excludedNamespaces": ["*-system"]})
    assert not excluded.matches(review("Pod", namespace="edgetrust-system"), no_labels)
    assert excluded.matches(review("Pod", namespace="shop"), no_labels)
    cluster = parse_match({"scope": "Cluster"})
    assert cluster.matches(review("ClusterRole", group="rbac.authorization.k8s.io"), no_labels)
    assert not cluster.matches(review("Pod", namespace="shop"), no_labels)
    namespaced = parse_match({"scope": "Namespaced"})
    assert not namespaced.matches(review("ClusterRole"), no_labels)


def test_a_namespace_is_matched_by_its_own_name_and_labels() -> None:
    match = parse_match({"namespaces": ["site-*"], "namespaceSelector": {"matchLabels": {"tier": "edge"}}})
    assert match.matches(review("Namespace", name="site-a", labels={"tier": "edge"}), no_labels)
    assert not match.matches(review("Namespace", name="site-a", labels={}), no_labels)
    assert not match.matches(review("Namespace", name="other", labels={"tier": "edge"}), no_labels)


def test_label_and_namespace_selectors() -> None:
    inventory = Inventory()
    inventory.replace(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "strict", "labels": {"tier": "strict"}}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lax"}},
        ]
    )
    selector = {
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["strict", "gold"]},
            {"key": "legacy", "operator": "DoesNotExist"},
        ]
    }
    match = parse_match({"namespaceSelector": selector, "labelSelector": {"matchLabels": {"app": "web"}}})
    assert match.matches(review("Pod", namespace="strict", labels={"app": "web"}), inventory.namespace_labels)
    assert not match.matches(review("Pod", namespace="strict", labels={"app": "db"}), inventory.namespace_labels)
    assert not match.matches(review("Pod", namespace="lax", labels={"app": "web"}), inventory.namespace_labels)
    assert not match.matches(review("Pod", namespace="unknown", labels={"app": "web"}), inventory.namespace_labels)


@pytest.mark.parametrize(
    "raw",
    [
        {"scope": "Everywhere"},
        {"kinds": ["Pod"]},
        {"namespaces": "shop"},
        {"labelSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
    ],
)
def test_bad_match_is_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"scope|kinds entries|namespaces must|matchExpressions"):
        parse_match(raw)


def test_expansion_builds_the_pod_a_deployment_would_create() -> None:
    deployment = {
        "metadata": {"name": "web"},
        "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}},
    }
    request = {
        "kind": {"group": "apps", "kind": "Deployment"},
        "namespace": "shop",
        "name": "web",
        "object": deployment,
    }
    implied = expand_to_pod(request, deployment["spec"]["template"]["spec"])
    assert implied is not None
    assert implied["kind"]["kind"] == "Pod"
    assert implied["object"]["metadata"] == {"labels": {"app": "web"}, "namespace": "shop", "name": "web-pod"}
    assert implied["object"]["spec"]["containers"] == [{"name": "c"}]


def test_inventory_is_shaped_like_gatekeepers_bounded_and_trimmed() -> None:
    inventory = Inventory(max_objects=2)
    big = {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"}
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "a", "namespace": "shop", "annotations": big, "managedFields": [{}]},
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
    ]
    inventory.replace(objects)
    assert len(inventory) == 2
    kept = inventory.tree["namespace"]["shop"]["networking.k8s.io/v1"]["Ingress"]["a"]
    assert kept["metadata"]["annotations"] == {"keep": "me"}
    assert "managedFields" not in kept["metadata"]
    assert set(inventory.tree["cluster"]["v1"]["Namespace"]) == {"shop"}
    # Over the limit nothing is replaced (a partial inventory would admit what the missing objects refuse).
    with pytest.raises(InventoryError, match="over 2 objects"):
        inventory.replace([*objects, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "over"}}])
    assert len(inventory) == 2
    assert set(inventory.tree["cluster"]["v1"]["Namespace"]) == {"shop"}


@pytest.mark.parametrize(
    ("messages", "assertions", "ok"),
    [
        ([], [{"violations": "no"}], True),
        (["a"], [{"violations": "no"}], False),
        (["a"], [], True),
        ([], [], False),
        (["x1", "x2", "y"], [{"violations": 2, "message": "x"}, {"violations": 1, "message": "^y$"}], True),
        (["x1"], [{"violations": 2, "message": "x"}], False),
        (["x1"], [{"message": "z", "violations": 0}], True),
        (["x1"], [{"violations": "maybe"}], False),
    ],
)
def test_gator_assertions(messages: list[str], assertions: list[dict[str, Any]], ok: bool) -> None:
    assert (check_assertions(messages, assertions) is None) is ok


def test_review_of_an_object_and_of_an_admission_review() -> None:
    built = review_of(
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "a", "namespace": "n"}}
    )
    assert built["kind"] == {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"}
    assert (built["name"], built["namespace"], built["operation"]) == ("a", "n", "CREATE")
    request = {"uid": "1", "operation": "UPDATE"}
    assert review_of({"kind": "AdmissionReview", "request": request}) == request
