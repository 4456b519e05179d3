from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from admission.errors import ReviewError, WorkloadShapeError
from admission.rego.workloads import container_images
from admission.review import build_response, parse_review, uid_of
from localpeers.webhook import WORKLOAD_GROUPS, pod, review, workload


def test_parse_keeps_what_policies_need() -> None:
    request = parse_review(json.dumps(review(pod("a:v1", name="web"), namespace="shop", uid="u-1")).encode())
    assert (request.uid, request.kind, request.namespace, request.name, request.operation) == (
        "u-1",
        "Pod",
        "shop",
        "web",
        "CREATE",
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.update(apiVersion="admission.k8s.io/v1beta1"), "expected apiVersion"),
        (lambda r: r.update(kind="Pod"), "expected apiVersion"),
        (lambda r: r.pop("request"), "has no request"),
        (lambda r: r["request"].pop("uid"), "uid is missing"),
        (lambda r: r["request"].update(uid="x" * 500), "uid is missing or not a short string"),
        (lambda r: r["request"].update(kind="Pod"), "kind.kind is missing"),
        (lambda r: r["request"].update(operation="PATCH"), "is not CREATE"),
        (lambda r: r["request"].update(object=[1]), "must be an object"),
        (lambda r: r["request"].update(namespace=7), "must be strings"),
    ],
)
def test_reviews_the_api_server_would_not_send_are_refused(mutate: object, reason: str) -> None:
    document = review(pod("a:v1"))
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ReviewError, match=reason):
        parse_review(json.dumps(document).encode())


def test_uid_of_garbage_is_empty() -> None:
    assert uid_of(b"{") == ""
    assert uid_of(b'{"request": {"uid": 5}}') == ""
    assert uid_of(b'{"request": {"uid": "ok"}}') == "ok"


def test_response_shape() -> None:
    answer = build_response(
        "u", allowed=False, message="no", warnings=["w"], audit_annotations={"a": "b"}, patch=[{"op": "add"}]
    )
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert response["status"] == {"message": "no", "code": 403}
    assert response["warnings"] == ["w"]
    assert json.loads(base64.b64decode(response["patch"])) == [{"op": "add"}]


def test_long_messages_are_clipped() -> None:
    answer = build_response("u", allowed=False, message="x" * 10_000)
    assert len(answer["response"]["status"]["message"]) == 4096


@pytest.mark.parametrize("kind", sorted(WORKLOAD_GROUPS))
def test_images_found_in_every_pod_bearing_kind(kind: str) -> None:
    obj = workload(kind, pod(["a:v1", "b:v2"]))
    images = container_images(kind, obj)
    assert [i.image for i in images] == ["a:v1", "b:v2"]
    prefix = {
        "Pod": "/spec",
        "CronJob": "/spec/jobTemplate/spec/template/spec",
    }.get(kind, "/spec/template/spec")
    assert images[0].pointer == f"{prefix}/containers/0/image"


def test_init_and_ephemeral_containers_count() -> None:
    obj = pod("a:v1")
    obj["spec"]["initContainers"] = [{"name": "init", "image": "i:v1"}]
    obj["spec"]["ephemeralContainers"] = [{"name": "dbg", "image": "d:v1"}]
    assert [i.image for i in container_images("Pod", obj)] == ["i:v1", "a:v1", "d:v1"]


def test_non_workload_kinds_have_no_images() -> None:
    assert container_images("ConfigMap", {"data": {}}) == []


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"spec": "garbage"}, "no pod spec"),
        ({"spec": {"containers": [{"name": "a", "image": "a:v1"}, "garbage"]}}, r"containers\[1\] is a str"),
        ({"spec": {"containers": {"a": {"image": "a:v1"}}}}, "not a list"),
        ({"spec": {"containers": [{"name": f"c{i}", "image": "a:v1"} for i in range(257)]}}, "257 containers"),
    ],
)
def test_pod_specs_we_would_judge_in_part_are_refused(obj: dict[str, Any], reason: str) -> None:
    # behaviour changed on purpose: these were skipped (or cut at 256) and so never checked
    with pytest.raises(WorkloadShapeError, match=reason):
        container_images("Pod", obj)
