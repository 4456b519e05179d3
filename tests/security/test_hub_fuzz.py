"""Schemathesis against a real trustd over TLS, as each kind of caller with its client certificate (issue 12,
finding 7): every operation of the app's own OpenAPI schema, bodies the schema does not describe included
(the routes that read raw JSON or a bundle blob), and not one answer may be a server error.

Bounded in time: a few examples per operation and caller (max_examples below), no example database, no
shrinking of a failure (every failing request is collected and reported at once instead).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from localpeers.nodes import enroll_node
from tests.integration.conftest import BootedDevice
from tests.support.fleet_hub import (
    CLUSTER,
    GROUP,
    OPERATOR,
    OTHER_GROUP_CLUSTER,
    PUBLISHER,
    FleetHub,
    running_fleet_hub,
)

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
#: the whole fuzz must stay within a couple of minutes on a shared 2-core machine
BUDGET_S = 240
#: routes that read their body themselves (no schema in the OpenAPI document): what a client may send them
RAW_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/policy/bundle"): {"application/json": {"schema": {}}},
    ("post", "/v1/policy/status"): {"application/json": {"schema": {}}},
    ("post", "/v1/policy/bundles/{group}"): {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
    },
}


#: caller kind -> its SVID files (None: no client certificate)
Callers = dict[str, tuple[Path, Path] | None]


#: what a number in a query string can also be, sent to every numeric query parameter first (explicit phase)
NUMBER_EDGES = ("nan", "NaN", "inf", "-inf", "1e309", "-1", "1e-400", "0x10", "9" * 400)
#: generated long polls wait at most this long (the app's own limit is a minute): the fuzz stays fast
FUZZ_MAX_WAIT_S = 0.3


def _schema(hub: FleetHub) -> dict[str, Any]:
    raw = hub.running.hub.app.openapi()
    for (method, path), content in RAW_BODIES.items():
        raw["paths"][path][method]["requestBody"] = {"content": content, "required": True}
    for operation in (op for item in raw["paths"].values() for op in item.values()):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query" and parameter["schema"].get("type") == "number":
                # what the app declares, with generated waits kept short, or any of the edge spellings
                short = {**parameter["schema"], "maximum": FUZZ_MAX_WAIT_S}
                parameter["schema"] = {"anyOf": [short, {"enum": list(NUMBER_EDGES)}]}
    return raw


@pytest.fixture
def fuzzed_hub(tmp_path: Path, ek_roots: Path, golden_device: BootedDevice) -> Iterator[tuple[FleetHub, Callers]]:
    with running_fleet_hub(tmp_path, ek_roots=ek_roots) as hub:
        enroll_node(
            hub.running.url,
            hub.running.ca_bundle,
            tcti=golden_device.tcti,
            event_log=golden_device.event_log,
            out_dir=tmp_path / "node",
        )
        # a released bundle: a cluster's poll answers at once instead of long-polling up to `wait` seconds
        with hub.client(PUBLISHER) as publisher:
            assert publisher.post(f"/v1/policy/bundles/{GROUP}", content=hub.signed_bundle(1)).status_code == 200
        callers: Callers = {
            "anonymous": None,
            "node": (tmp_path / "node" / "svid.pem", tmp_path / "node" / "svid.key"),
            "cluster": hub.svid(CLUSTER),
            "cluster of another group": hub.svid(OTHER_GROUP_CLUSTER),  # nothing released to it: real long polls
            "operator": hub.svid(OPERATOR),
            "publisher": hub.svid(PUBLISHER),
        }
        yield hub, callers


def _fuzz(operation: Any, session: requests.Session, url: str, caller: str, failures: list[str]) -> int:
    """Up to MAX_EXAMPLES generated requests to one operation as one caller, valid ones and ones that break the
    schema (schemathesis' positive and negative modes); server errors go to `failures`."""
    calls = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(*(operation.as_strategy(mode) for mode in GenerationMode)))
    def fuzz(case: Any) -> None:
        nonlocal calls
        calls += 1
        # schemathesis passes its own verify= to requests: the hub's CA and the caller's SVID go with each call
        response = case.call(base_url=url, session=session, timeout=30, verify=session.verify, cert=session.cert)
        if response.status_code >= 500:
            failures.append(
                f"{caller}: {case.method} {case.formatted_path} -> {response.status_code} {response.text[:200]}"
            )

    fuzz()
    return calls


def test_schemathesis_finds_no_server_error_on_any_route_for_any_caller(
    fuzzed_hub: tuple[FleetHub, Callers],
) -> None:
    hub, callers = fuzzed_hub
    schema = schemathesis.openapi.from_dict(_schema(hub))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # the whole app, not an empty schema
    failures: list[str] = []
    calls = 0
    started = time.monotonic()
    for caller, svid in callers.items():
        with requests.Session() as session:
            session.verify = str(hub.running.ca_bundle)
            if svid is not None:
                session.cert = (str(svid[0]), str(svid[1]))
            for operation in operations:
                calls += _fuzz(operation, session, hub.running.url, caller, failures)
                assert time.monotonic() - started < BUDGET_S, f"the fuzz ran over {BUDGET_S} s ({calls} calls)"
    assert failures == [], "\n".join(failures[:30])
    assert calls >= len(callers) * len(operations) * 3  # it really sent requests
