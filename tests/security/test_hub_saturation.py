"""A saturated hub answers 503 with Retry-After at once, never a request left to time out: against a real trustd
(`server_config`, as `trustd serve` runs it) with small bounds. Long polls past their bound are refused while
real work and the liveness probe still go through; requests held in progress (bodies that never come) past
theirs refuse the next request at once, and the hub takes requests again as soon as room is made."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgetrust._internal.saturation import Saturation
from tests.support.fleet_hub import CLUSTER, GROUP, FleetHub, running_fleet_hub
from tests.support.waiting import until

pytestmark = pytest.mark.integration

WAIT_S = 30.0


@pytest.fixture
def hub(tmp_path: Path, ek_roots: Path) -> Iterator[FleetHub]:
    with running_fleet_hub(tmp_path, ek_roots=ek_roots, max_long_polls=2, max_in_flight_requests=2) as hub:
        yield hub


def saturation(hub: FleetHub) -> Saturation:
    served = hub.running.served_app
    assert isinstance(served, Saturation)
    return served


def assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "2"
    assert answer.json()["error"] == "server_saturated"


def test_long_polls_past_their_bound_are_refused_at_once_and_work_still_goes_through(hub: FleetHub) -> None:
    answers: list[httpx.Response] = []

    def hold() -> None:
        with hub.client(CLUSTER) as client:
            answers.append(client.get("/v1/policy/bundle", params={"wait": WAIT_S}))

    hub.svid(CLUSTER)  # issued once, before the threads share it
    held = [threading.Thread(target=hold) for _ in range(2)]
    for thread in held:
        thread.start()
    until(lambda: saturation(hub).long_polls == 2, "two long polls to be held")
    with hub.client(CLUSTER) as client:
        assert_refused(client.get("/v1/policy/bundle", params={"wait": WAIT_S}))  # answered now, not in 30 s
        assert client.get("/v1/policy/bundle").status_code == 204  # a poll that does not wait is work: room
        assert client.get("/healthz").status_code == 200
    # a publish (work, not a poll) goes through and wakes the held polls, which makes room again
    with hub.client("spiffe://edge.example/operator/ci") as publisher:
        published = publisher.post(f"/v1/policy/bundles/{GROUP}", content=hub.signed_bundle(1))
    assert published.status_code == 200, published.text
    for thread in held:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200]
    with hub.client(CLUSTER) as client:
        again = client.get(
            "/v1/policy/bundle", params={"wait": 1}, headers={"If-None-Match": answers[0].headers["etag"]}
        )
    assert again.status_code == 304  # held (not refused) until its wait ended
    assert saturation(hub).refused == 1


def _half_request(hub: FleetHub) -> ssl.SSLSocket:
    """An anonymous request whose head arrived and whose body never does: in progress until the body timeout."""
    url = httpx.URL(hub.running.url)
    context = ssl.create_default_context(cafile=str(hub.running.ca_bundle))
    raw = socket.create_connection((url.host, url.port or 443))
    tls = context.wrap_socket(raw, server_hostname=url.host)
    tls.sendall(
        b"POST /v1/enroll/challenge HTTP/1.1\r\nhost: trustd\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )
    return tls


def test_requests_past_the_in_flight_bound_are_refused_until_room_is_made(hub: FleetHub) -> None:
    stuck = [_half_request(hub) for _ in range(2)]
    try:
        until(lambda: saturation(hub).in_flight == 2, "two requests to be in progress")
        with hub.client(CLUSTER) as client:
            assert_refused(client.get("/v1/policy/bundle"))
            assert client.get("/healthz").status_code == 200  # the probe is never refused
    finally:
        for sock in stuck:
            sock.close()
    until(lambda: saturation(hub).in_flight == 0, "the abandoned requests to end")
    with hub.client(CLUSTER) as client:
        assert client.get("/v1/policy/bundle").status_code == 204
