"""The hub client's one reading of the hub's answers (edgetrust/_internal/hubclient.py), and each package's
conversion of it into its own errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetrust._internal import hubclient
from edgetrust._internal.hubclient import HubCallError, HubFailure
from trustd.errors import EnrollmentError, HubUnreachableError, TrustdError


def hub_failure(exc: HubCallError) -> TrustdError:
    """As trustd/agent/enroll_client.py converts (importing it would need tpm2-pytss)."""
    return exc.convert(unreachable=HubUnreachableError, otherwise=EnrollmentError)


def _failure(status: int, body: object = None, headers: dict[str, str] | None = None) -> HubCallError:
    raw = json.dumps(body).encode() if body is not None else b""
    return hubclient.failure_of(status, headers or {}, raw, "fleet list")


@pytest.mark.parametrize(
    ("status", "failure", "exit_code"),
    [
        (403, HubFailure.REFUSED, 1),
        (404, HubFailure.REFUSED, 1),
        (400, HubFailure.BAD_INPUT, 1),
        (413, HubFailure.BAD_INPUT, 1),
        (409, HubFailure.CONFLICT, 1),
        (429, HubFailure.UNREACHABLE, 3),
        (500, HubFailure.UNREACHABLE, 3),
        (503, HubFailure.UNREACHABLE, 3),
    ],
)
def test_each_answer_means_one_failure(status: int, failure: HubFailure, exit_code: int) -> None:
    found = _failure(status, {"error": "some_code", "reason": "because"})
    assert found.failure is failure
    assert found.exit_code() == exit_code
    assert found.reason == "because"
    assert found.error == "some_code"
    assert "because" in str(found)


def test_503_says_when_to_retry_and_decided_nothing() -> None:
    found = _failure(503, {"error": "unavailable", "reason": "store down"}, {"retry-after": "5"})
    assert found.unreachable
    assert found.retry_after == "5"
    assert str(found) == "trustd is unavailable for the fleet list (503): store down; retry after 5 s"
    converted = hub_failure(found)
    assert isinstance(converted, HubUnreachableError)


def test_a_refusal_converts_to_the_callers_family_with_the_hubs_reason() -> None:
    found = _failure(403, {"error": "caller_not_allowed", "reason": "not an operator"})
    converted = hub_failure(found)
    assert type(converted) is EnrollmentError
    assert str(converted) == "trustd refused the fleet list (403 caller_not_allowed): not an operator"


def test_a_body_that_is_not_json_still_names_a_reason() -> None:
    found = hubclient.failure_of(502, {}, b"<html>bad gateway</html>", "enrollment")
    assert found.unreachable
    assert "bad gateway" in str(found)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_a_200_that_is_not_a_json_object_is_a_bad_answer(body: bytes) -> None:
    with pytest.raises(HubCallError) as caught:
        hubclient.json_object(body, "enrollment")
    assert caught.value.failure is HubFailure.BAD_ANSWER


def test_plain_http_and_missing_credentials_are_local_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(HubCallError) as plain:
        hubclient.check_url("http://hub:8443")
    assert plain.value.failure is HubFailure.LOCAL
    assert plain.value.exit_code() == 2
    with pytest.raises(HubCallError) as roots:
        hubclient.tls_context(tmp_path / "missing.pem")
    assert roots.value.failure is HubFailure.LOCAL
    with pytest.raises(HubCallError) as svid:
        hubclient.svid_context(tmp_path)
    assert svid.value.failure is HubFailure.LOCAL
