"""Schemathesis against the real `edgetrust-admission serve` process over TLS, driven by the webhook's own
OpenAPI document, plus hand-made garbage AdmissionReviews: no request path ever answers a server error.

The webhook runs with every kind of policy loaded (the repo's Rego library, a signature policy on the real
registry, Gatekeeper templates and constraints), so generated reviews reach every decision path. Bounded:
a fixed number of examples per operation and mode, and a wall-clock budget.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from localpeers.opa_server import opa_server
from localpeers.registry import Registry
from localpeers.tlsca import TestCA
from localpeers.webhook import WebhookProcess, pod, policy_dir, review, webhook_process, workload
from tests.integration.admission.conftest import Images, signature_policy
from tests.integration.gatekeeper.conftest import DEFAULT_CONSTRAINTS, gatekeeper_dir
from tests.support.sigstore_instance import PrivateSigstore

pytestmark = pytest.mark.integration

BUDGET_S = 100.0
EXAMPLES = 60  # per operation and generation mode
REVIEW_PATHS = ("/validate", "/mutate")
KINDS = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Namespace", "ConfigMap", "Ingress"]


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory,
    test_ca: TestCA,
    registry: Registry,
    cosign_keys: tuple[Path, Path],
    sigstore: PrivateSigstore,
    images: Images,
) -> Iterator[WebhookProcess]:
    work = tmp_path_factory.mktemp("fuzz")
    extra = {"signed_images": signature_policy(registry, cosign_keys, sigstore)}
    with (
        opa_server(work / "opa") as opa,
        webhook_process(
            work / "webhook",
            test_ca,
            policy_dir=policy_dir(work / "policies", extra=extra),
            gatekeeper_dir=gatekeeper_dir(work / "gatekeeper", DEFAULT_CONSTRAINTS),
            opa_port=opa.port,
            registry_ca_file=registry.ca_file,
            registry_timeout_s=2.0,
        ) as process,
    ):
        yield process


def _steered(document: dict[str, Any], images: Images) -> dict[str, Any]:
    """The webhook's schema, with pod-shaped objects and real kinds and images offered among the free-form
    values, so that generated reviews get past parsing into the policies (and negative mode breaks those)."""
    document = copy.deepcopy(document)
    request = document["components"]["schemas"]["AdmissionReview"]["properties"]["request"]["properties"]
    request["kind"]["properties"]["kind"] = {"anyOf": [{"enum": KINDS}, {"type": "string"}]}
    image = {"anyOf": [{"enum": [images.signed, images.unsigned, "nginx", "LOCALHOST:1/a:v1"]}, {"type": "string"}]}
    container = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "image": image,
            "securityContext": {"type": "object"},
            "resources": {"type": "object"},
        },
    }
    spec = {
        "type": "object",
        "properties": {
            "containers": {"type": "array", "items": container, "maxItems": 4},
            "initContainers": {"type": "array", "items": container, "maxItems": 2},
            "hostNetwork": {"type": "boolean"},
            "volumes": {"type": "array", "items": {"type": "object"}, "maxItems": 2},
        },
    }
    metadata = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object"},
        },
    }
    template = {"type": "object", "properties": {"metadata": metadata, "spec": spec}}
    workload_spec = {
        "type": "object",
        "properties": {
            "template": template,
            "jobTemplate": {
                "type": "object",
                "properties": {"spec": {"type": "object", "properties": {"template": template}}},
            },
            "containers": spec["properties"]["containers"],
        },
    }
    request["object"] = {
        "anyOf": [
            {"type": "object", "properties": {"metadata": metadata, "spec": workload_spec}},
            {"type": "object"},
        ]
    }
    return document


def _assert_answer(path: str, response: requests.Response, what: object) -> None:
    assert response.status_code < 500, (path, response.status_code, response.text[:500], what)
    if path in REVIEW_PATHS:
        document = response.json()
        assert document["kind"] == "AdmissionReview", (path, document)
        assert isinstance(document["response"]["allowed"], bool), (path, document)
        assert isinstance(document["response"]["uid"], str), (path, document)


def _fuzz(
    strategy: st.SearchStrategy[schemathesis.Case],
    path: str,
    examples: int,
    url: str,
    session: requests.Session,
    deadline: float,
) -> int:
    """Run one operation's generated cases (shrinking a failure to its smallest case); returns calls made."""
    calls = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def call(case: schemathesis.Case) -> None:
        nonlocal calls
        if time.monotonic() > deadline:
            return
        response = case.call(base_url=url, session=session, timeout=15, verify=session.verify)
        calls += 1
        _assert_answer(path, response, case.body)

    call()
    return calls


def test_schemathesis_finds_no_server_error_on_any_webhook_path(
    fuzz_target: WebhookProcess, test_ca: TestCA, images: Images
) -> None:
    document = httpx.get(f"{fuzz_target.url}/openapi.json", verify=fuzz_target.context, timeout=10).json()
    assert set(REVIEW_PATHS) <= set(document["paths"])  # the webhook describes its review paths itself
    schema = schemathesis.openapi.from_dict(_steered(document, images))
    session = requests.Session()
    session.verify = str(test_ca.ca_file)
    deadline = time.monotonic() + BUDGET_S
    calls = {"n": 0}
    for path, methods in document["paths"].items():
        for method in methods:
            # negative mode needs something to break: only the review paths take input
            modes = [schemathesis.GenerationMode.POSITIVE]
            if path in REVIEW_PATHS:
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:
                strategy = schema[path][method.upper()].as_strategy(generation_mode=mode)
                examples = EXAMPLES if path in REVIEW_PATHS else 10
                calls["n"] += _fuzz(strategy, path, examples, fuzz_target.url, session, deadline)
    assert calls["n"] > 100  # the budget was not spent before anything ran


GARBAGE: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b'"AdmissionReview"',
    b"{" * 5000,
    b"[" * 1100 + b"]" * 1100,
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b"\xff\xfe\x00garbage",
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "\\ud800"}}',
    b'{"a": 1e99999}',
    b'{"a": 123456789012345678901234567890}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": null}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}',
]


DEEP = "__deep__"  # replaced in the body by an object nested ~1015 levels: orjson reads up to 1024


def _body(review_object: dict[str, Any]) -> str:
    nesting = 1015
    return json.dumps(review_object).replace(json.dumps(DEEP), '{"n":' * nesting + "{}" + "}" * nesting)


def _garbage_reviews(images: Images) -> list[dict[str, Any]]:
    """Well-formed envelopes around objects no API server would send."""
    reviews: list[dict[str, Any]] = []
    broken: list[Any] = [None, 7, "x", [], [None], {"a": [1]}, {"spec": []}, {"template": "t"}, {"jobTemplate": []}]
    for kind in ("Pod", "Deployment", "CronJob", "Job"):
        base = review(workload(kind, pod(images.signed)))
        for value in broken:
            for field in ("spec", "metadata"):
                mangled = copy.deepcopy(base)
                mangled["request"]["object"][field] = value
                reviews.append(mangled)
            mangled = copy.deepcopy(base)
            mangled["request"]["oldObject"] = value
            reviews.append(mangled)
            mangled = copy.deepcopy(base)
            mangled["request"]["kind"] = {"group": value, "version": value, "kind": kind}
            reviews.append(mangled)
            mangled = copy.deepcopy(base)
            mangled["request"]["namespace"] = value
            reviews.append(mangled)
            if kind in ("Deployment", "Job"):
                for field in ("metadata", "spec"):
                    mangled = copy.deepcopy(base)
                    mangled["request"]["object"]["spec"]["template"][field] = value
                    reviews.append(mangled)
            if kind == "CronJob":
                mangled = copy.deepcopy(base)
                mangled["request"]["object"]["spec"]["jobTemplate"] = value
                reviews.append(mangled)
        labelled = copy.deepcopy(base)
        labelled["request"]["object"]["metadata"]["labels"] = {"team": ["not", "a", "string"], "7": None}
        reviews.append(labelled)
        deep = copy.deepcopy(base)
        deep["request"]["object"]["metadata"]["annotations"] = DEEP
        reviews.append(deep)
    return reviews


def test_garbage_admission_reviews_get_a_refusal_never_a_server_error(
    fuzz_target: WebhookProcess, images: Images
) -> None:
    context: ssl.SSLContext = fuzz_target.context
    with httpx.Client(base_url=fuzz_target.url, verify=context, timeout=15) as client:
        for path in REVIEW_PATHS:
            for body in GARBAGE:
                answer = client.post(path, content=body, headers={"content-type": "application/json"})
                assert answer.status_code < 500, (path, body[:80], answer.status_code, answer.text[:300])
                assert answer.json()["response"]["allowed"] is False, (path, body[:80])
            for mangled in _garbage_reviews(images):
                answer = client.post(path, content=_body(mangled))
                assert answer.status_code < 500, (path, answer.status_code, answer.text[:300])
                document = answer.json()
                assert document["response"]["uid"] == mangled["request"]["uid"], document
                assert isinstance(document["response"]["allowed"], bool)
            # a Content-Length that is not a number, that lies, or a chunked body past the limit
            for length in (b"abc", b"-1", b"99999999999"):
                status = _raw_post(fuzz_target, path, b"Content-Length: " + length + b"\r\n", b"{}")
                assert status < 500, (path, length, status)
            chunk = b"x" * 65536
            chunks = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 64 + b"0\r\n\r\n"
            status = _raw_post(fuzz_target, path, b"Transfer-Encoding: chunked\r\n", chunks)
            assert status == 413, (path, status)


def _raw_post(target: WebhookProcess, path: str, headers: bytes, body: bytes) -> int:
    """What no HTTP client library will send for us; the status code of the answer (0: connection closed)."""
    url = httpx.URL(target.url)
    with (
        socket.create_connection((url.host, url.port or 443), timeout=15) as raw,
        target.context.wrap_socket(raw, server_hostname=url.host) as tls,
    ):
        request = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: webhook\r\nConnection: close\r\n" + headers
        tls.sendall(request + b"Content-Type: application/json\r\n\r\n" + body)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := tls.recv(65536):
                answer += chunk
    if not answer.startswith(b"HTTP/1.1 "):
        return 0
    return int(answer.split(b" ", 2)[1])


@st.composite
def _json_noise(draw: st.DrawFn) -> bytes:
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    value = draw(
        st.recursive(
            leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        )
    )
    envelope = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": value}
    return json.dumps(envelope).encode()


def test_hypothesis_noise_in_the_request_never_causes_a_server_error(fuzz_target: WebhookProcess) -> None:
    deadline = time.monotonic() + 30

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=_json_noise())
    def call(body: bytes) -> None:
        if time.monotonic() > deadline:
            return
        answer = httpx.post(f"{fuzz_target.url}/validate", content=body, verify=fuzz_target.context, timeout=15)
        assert answer.status_code < 500, (body[:200], answer.text[:300])

    call()
