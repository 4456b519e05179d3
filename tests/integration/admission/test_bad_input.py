"""Garbage in, a valid AdmissionReview out: never a server error, never an answer the API server cannot read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localpeers.webhook import RunningWebhook, pod, review
from tests.integration.admission.conftest import Images

pytestmark = pytest.mark.integration


def post(webhook: RunningWebhook, body: bytes, path: str = "/validate") -> tuple[int, dict[str, Any]]:
    with webhook.client() as client:
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
    return answer.status_code, answer.json()


def assert_valid_refusal(status: int, answer: dict[str, Any], reason: str) -> None:
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 400
    assert reason in answer["response"]["status"]["message"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"[]", "must be a JSON object"),
        (b"\xff\xfe garbage", "body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "body is not JSON"),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(),
            "expected apiVersion",
        ),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "has no request"),
    ],
)
def test_malformed_reviews_get_a_clear_refusal(webhook: RunningWebhook, body: bytes, reason: str) -> None:
    status, answer = post(webhook, body)
    assert_valid_refusal(status, answer, reason)


def test_missing_uid_is_refused(webhook: RunningWebhook, images: Images) -> None:
    request = review(pod(images.signed))
    del request["request"]["uid"]
    status, answer = post(webhook, json.dumps(request).encode())
    assert_valid_refusal(status, answer, "request.uid is missing")
    assert answer["response"]["uid"] == ""


def test_wrong_operation_is_refused_with_the_uid_echoed(webhook: RunningWebhook, images: Images) -> None:
    request = review(pod(images.signed), uid="abc-123")
    request["request"]["operation"] = "EXPLODE"
    status, answer = post(webhook, json.dumps(request).encode())
    assert_valid_refusal(status, answer, "is not CREATE")
    assert answer["response"]["uid"] == "abc-123"


def test_huge_objects_are_refused_before_parsing(webhook: RunningWebhook, images: Images) -> None:
    request = review(pod(images.signed))
    request["request"]["object"]["metadata"]["annotations"] = {"blob": "x" * (4 * 1024 * 1024)}
    status, answer = post(webhook, json.dumps(request).encode())
    assert status == 413
    assert answer["response"]["allowed"] is False
    assert "limited to" in answer["response"]["status"]["message"]


def test_delete_and_connect_are_admitted_without_policy(webhook: RunningWebhook, images: Images) -> None:
    request = review(pod(images.unsigned), operation="DELETE")
    request["request"]["object"] = None
    assert webhook.review(request)["allowed"] is True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def mangled_reviews(draw: st.DrawFn) -> bytes:
    """Real reviews with any field replaced, dropped or retyped; or plain noise."""
    base = review(pod(draw(st.sampled_from(["127.0.0.1:5000/a:v1", "nginx", "x@sha256:" + "a" * 64, "UPPER/case"]))))
    request = base["request"]
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        key = draw(st.sampled_from(sorted(request)))
        request[key] = draw(json_values)
    elif choice == 2:
        obj = request["object"]
        path = draw(st.sampled_from(["spec", "metadata", "kind", "apiVersion"]))
        obj[path] = draw(json_values)
    else:
        container = request["object"]["spec"]["containers"][0]
        container[draw(st.sampled_from(["image", "name", "securityContext"]))] = draw(json_values)
    return json.dumps(base).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mangled_reviews())
def test_fuzzed_reviews_never_cause_server_errors(webhook: RunningWebhook, body: bytes) -> None:
    with webhook.client() as client:
        answer = client.post("/validate", content=body)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["kind"] == "AdmissionReview"
    assert isinstance(document["response"]["uid"], str)
    assert isinstance(document["response"]["allowed"], bool)
