"""The fleet file's format is edgetrust/schemas/fleet.schema.json: a stock JSON Schema validator over that file and the
hub's reader (Fleet.load) accept and refuse the same files; examples/fleet.yaml is one of the good ones, and
`trustctl fleet check` says so before a deploy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from trustd.server.policy.distribution import Fleet, PolicyDistributionError

REPO = Path(__file__).resolve().parents[4]
SCHEMA = json.loads((REPO / "edgetrust" / "schemas" / "fleet.schema.json").read_text())
EXAMPLE = REPO / "examples" / "fleet.yaml"
TRUSTCTL = str(Path(sys.executable).parent / "trustctl")

GOOD: list[dict[str, Any]] = [
    {},
    {"groups": None, "clusters": None, "operators": None},
    {"groups": {"all": {}}},
    {"groups": {"g": {"matchLabels": {"k": "v", "n": 1}, "waves": [50, 100], "maxFailures": 0, "advanceAt": 100}}},
    {"clusters": {"c1": None, "c2": {"labels": {"a": "b"}}}, "operators": ["spiffe://retail.example/op/alice"]},
]
BAD: list[tuple[dict[str, Any], str]] = [
    ({"groups": {"stores": {"waves": [10, 150]}}}, "groups.stores.waves[1]: must be a whole percentage from 1 to 100"),
    ({"groups": {"stores": {"waves": [10, "50"]}}}, "groups.stores.waves[1]: must be a whole percentage"),
    ({"groups": {"stores": {"advanceAt": 0}}}, "groups.stores.advanceAt: must be a whole percentage"),
    ({"groups": {"stores": {"maxFailures": -1}}}, "groups.stores.maxFailures: -1 is less than the minimum of 0"),
    ({"groups": {"stores": {"maxFailure": 2}}}, "groups.stores: unknown field 'maxFailure'"),
    ({"groups": {"stores": {"nodeAttestationMaxAge": 10}}}, "groups.stores.nodeAttestationMaxAge: 10 is less than"),
    ({"groups": {"stores": {"nodeAttestationMaxAge": "6h"}}}, "groups.stores.nodeAttestationMaxAge: '6h' is not"),
    ({"groups": {"stores": {"publishers": ["ci"]}}}, "groups.stores.publishers[0]: 'ci' does not match"),
    ({"groups": {"stores": None}}, "groups.stores: None is not of type 'object'"),
    ({"groups": {"../up": {}}}, "'../up' does not match"),
    ({"clusters": {"c": {"label": {}}}}, "clusters.c: unknown field 'label'"),
    ({"operators": "spiffe://x/op"}, "operators: 'spiffe://x/op' is not of type 'array', 'null'"),
    ({"group": {}}, "unknown field 'group'"),
]


def fleet_file(tmp_path: Path, content: dict[str, Any]) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_the_schema_file_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("content", [*GOOD, yaml.safe_load(EXAMPLE.read_text())])
def test_a_good_fleet_file_passes_the_schema_file_and_the_hub(tmp_path: Path, content: dict[str, Any]) -> None:
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(content)
    Fleet.load(fleet_file(tmp_path, content))


@pytest.mark.parametrize(("content", "message"), BAD)
def test_a_bad_fleet_file_fails_both_naming_the_field(tmp_path: Path, content: dict[str, Any], message: str) -> None:
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(content)
    with pytest.raises(PolicyDistributionError) as raised:
        Fleet.load(fleet_file(tmp_path, content))
    assert message in str(raised.value)


def test_the_example_keeps_every_feature_and_loads(tmp_path: Path) -> None:
    fleet = Fleet.load(EXAMPLE)
    stores = fleet.groups["stores"]
    assert stores.canary == ("store-0001",)
    assert (stores.waves, stores.max_failures, stores.advance_at) == ((10, 50, 100), 2, 90)
    assert stores.node_attestation_max_age == 21600
    assert fleet.groups["gateways"].node_attestation_max_age == 21600  # the default
    assert stores.publishers == {"spiffe://retail.example/ci/policy-stores"}
    assert fleet.members(stores) == ["store-0001", "store-0002", "store-0003"]
    assert fleet.group_of("gw-berlin") == fleet.groups["gateways"]
    assert fleet.operators == {"spiffe://retail.example/operator/alice"}


def test_a_misspelt_canary_is_refused_not_ignored(tmp_path: Path) -> None:
    content = {"groups": {"g": {"canary": ["store-01"]}}, "clusters": {"store-0001": {}}}
    with pytest.raises(PolicyDistributionError, match=r"groups\.g\.canary\[0\]: no cluster 'store-01'"):
        Fleet.load(fleet_file(tmp_path, content))


def test_fleet_check_says_valid_or_names_the_field_with_the_exit_code(tmp_path: Path) -> None:
    done = subprocess.run([TRUSTCTL, "fleet", "check", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{EXAMPLE}: valid: 2 groups, 4 clusters, 1 operators")
    assert "group stores: 3 clusters, canary store-0001" in done.stdout
    bad = fleet_file(tmp_path, {"groups": {"stores": {"waves": [10, 150, 100]}}})
    done = subprocess.run([TRUSTCTL, "fleet", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"trustctl fleet check: fleet file {bad}: groups.stores.waves[1]: must be a whole percentage from 1 to 100, "
        "not 150"
    )
    old = fleet_file(tmp_path, {"publishers": ["spiffe://retail.example/ci"]})
    done = subprocess.run([TRUSTCTL, "fleet", "check", str(old)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "move each SPIFFE ID under `groups.<group>.publishers`" in done.stderr
    done = subprocess.run(
        [TRUSTCTL, "fleet", "check", str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
