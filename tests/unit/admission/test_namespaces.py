"""Moving our Rego under a namespace: every package and reference of our roots moves, nothing else does."""

from __future__ import annotations

import pytest

from admission.errors import ConfigError
from admission.rego.namespaces import data_path, namespaced
from admission.rego.opa import DECISION_MODULE

SOURCE = """package edgetrust.admission.x

import rego.v1
import data.edgetrust.lib.workloads
import data.libs.K8sX.lib.helpers

violation contains {"msg": "m"} if {
	data.templates.K8sX.violation
	data.inventory.namespace["a"]
	input.parameters.edgetrust_like == data.edgetrustish.value
}
"""


def test_packages_and_references_of_our_roots_move_under_the_namespace() -> None:
    moved = namespaced(SOURCE, "swap3")
    assert moved.startswith("package swap3.edgetrust.admission.x\n")
    assert "import data.swap3.edgetrust.lib.workloads" in moved
    assert "import data.swap3.libs.K8sX.lib.helpers" in moved
    assert "data.swap3.templates.K8sX.violation" in moved
    # shared or foreign roots stay: the inventory is one for all sets, a root that only starts alike is not ours
    assert 'data.inventory.namespace["a"]' in moved
    assert "data.edgetrustish.value" in moved
    assert "import rego.v1" in moved


def test_the_decision_module_reads_its_own_sets_config_and_policies() -> None:
    moved = namespaced(DECISION_MODULE, "swap1")
    assert moved.startswith("package swap1.edgetrust.decision")
    assert "data.edgetrust." not in moved
    assert "data.templates." not in moved
    assert "data.swap1.edgetrust.config.policies[name]" in moved


def test_no_namespace_leaves_the_source_as_it_is() -> None:
    assert namespaced(SOURCE, "") == SOURCE
    assert data_path("edgetrust/config", "") == "edgetrust/config"
    assert data_path("edgetrust/config", "swap2") == "swap2/edgetrust/config"


@pytest.mark.parametrize("bad", ["Swap", "1swap", "swap-1", "swap.1", "edgetrust", "inventory", "a/b", "x" * 64])
def test_a_namespace_is_one_lower_case_identifier_apart_from_our_roots(bad: str) -> None:
    with pytest.raises(ConfigError):
        namespaced(SOURCE, bad)
