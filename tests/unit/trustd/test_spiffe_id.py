from __future__ import annotations

import pytest

from trustd.errors import InvalidSpiffeIdError
from trustd.spiffe_id import SpiffeId, TrustDomain, render_spiffe_id


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
