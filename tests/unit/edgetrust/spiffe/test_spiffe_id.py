from __future__ import annotations

import pytest

from edgetrust.spiffe.id import ReservedNames, SpiffeId, TrustDomain, render_spiffe_id
from trustd.errors import InvalidSpiffeIdError, ReservedSpiffeIdError


@pytest.mark.parametrize(
    "text", ["spiffe://edge.example", "spiffe://edge.example/site/lab/node/gw-01", "spiffe://a_b-c.d/x.y"]
)
def test_valid(text: str) -> None:
    assert str(SpiffeId.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "http://edge.example/x",
        "spiffe://",
        "spiffe://Edge.example/x",
        "spiffe://edge.example/",
        "spiffe://e/a//b",
        "spiffe://e/a/../b",
        "spiffe://e/./b",
        "spiffe://e:443/x",
        "spiffe://user@e/x",
        "spiffe://e/x?q=1",
        "spiffe://e/x#f",
        "spiffe://e/%41",
        "spiffe://e/" + "a" * 2100,
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeId.parse(text)


def test_template_fields_cannot_escape_their_segment() -> None:
    td = TrustDomain.parse("edge.example")
    assert str(render_spiffe_id("/site/{site}/node/{node}", td, site="lab", node="gw-01")) == (
        "spiffe://edge.example/site/lab/node/gw-01"
    )
    for bad in ("a/b", "..", "", "x y", "évil"):
        with pytest.raises(InvalidSpiffeIdError, match="node"):
            render_spiffe_id("/site/{site}/node/{node}", td, site="lab", node=bad)
    with pytest.raises(KeyError):
        render_spiffe_id("/site/{site}", td)


# -- reserved names (issue 12, finding 3) -------------------------------------------------------------------

_RESERVED = ReservedNames(
    TrustDomain("edge.example"),
    node_template="/site/{site}/node/{node}",
    privileged=frozenset({"spiffe://edge.example/ops/alice", "spiffe://other.example/operator/x"}),
)


@pytest.mark.parametrize(
    "name",
    [
        "spiffe://edge.example",
        "spiffe://edge.example/trustd",
        "spiffe://edge.example/cluster/a",
        "spiffe://edge.example/operator/admin",
        "spiffe://edge.example/publisher/ci/x",
        "spiffe://edge.example/ops/alice",
        "spiffe://edge.example/ops/alice/laptop",
        "spiffe://edge.example/site/lab/node/gw-01",
        "spiffe://edge.example/site/lab/node/gw-01/app",
        "spiffe://other.example/workload/web",
    ],
)
def test_reserved_names_are_refused(name: str) -> None:
    with pytest.raises(ReservedSpiffeIdError):
        _RESERVED.check(SpiffeId.parse(name))


@pytest.mark.parametrize(
    "name",
    ["spiffe://edge.example/workload/web", "spiffe://edge.example/ops/bob", "spiffe://edge.example/site/lab/app"],
)
def test_ordinary_workload_names_pass(name: str) -> None:
    _RESERVED.check(SpiffeId.parse(name))
    assert _RESERVED.reason(SpiffeId.parse(name), is_node=lambda n: n == "spiffe://edge.example/site/lab") == (
        None if "site" not in name else f"{name} equals or sits under the enrolled node spiffe://edge.example/site/lab"
    )


@pytest.mark.parametrize("template", ["/", "/{node}", "/{a}/{b}", "/operator/{node}", "/ops/{node}", "/trustd"])
def test_templates_that_can_render_reserved_names_are_refused(template: str) -> None:
    reserved = ReservedNames(
        TrustDomain("edge.example"), node_template=template, privileged=frozenset({"spiffe://edge.example/ops/alice"})
    )
    with pytest.raises(ReservedSpiffeIdError):
        reserved.check_template()


@pytest.mark.parametrize("template", ["/site/{site}/node/{node}", "/node-{node}", "/ops-{node}/x"])
def test_templates_with_a_fixed_first_segment_of_their_own_pass(template: str) -> None:
    ReservedNames(TrustDomain("edge.example"), node_template=template).check_template()
