"""Registry credentials (edgetrust/oci/auth.py) and the client's name checks: a credentials file that does not
parse stops the start instead of turning into anonymous requests; the password is never in a repr; tokens are
cached by scope until shortly before they expire, and never more than a bounded number of them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from edgetrust.oci import auth
from edgetrust.oci.auth import Credential, TokenCache, load_credentials, parse_challenge, registry_key
from edgetrust.oci.errors import OCIError, RegistryConfigError
from edgetrust.oci.registry import check_name, referrers_tag, split_digest


def _config(tmp_path: Path, auths: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def test_docker_config_entries_by_auth_or_username_and_password_keyed_by_registry(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"ci:s3cret:with:colons").decode()
    found = load_credentials(
        _config(
            tmp_path,
            {
                "https://Registry.Example:443/v2/": {"auth": encoded},
                "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
                "helper.example": {},  # what `docker login` leaves when a credential helper holds the secret
            },
        )
    )
    assert found == {"registry.example": Credential("ci", "s3cret:with:colons"), "docker.io": Credential("hub", "pw")}
    assert "s3cret" not in repr(found)
    assert found["docker.io"].basic() == "Basic " + base64.b64encode(b"hub:pw").decode()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "is not JSON"),
        (json.dumps({"auths": []}), 'has no "auths" object'),
        (json.dumps({"auths": {"r.example": {"auth": "%%%"}}}), "is not base64 of user:password"),
        (json.dumps({"auths": {"r.example": {"auth": base64.b64encode(b":s3cret").decode()}}}), "user:password"),
        (json.dumps({"auths": {"r.example": {"username": "ci"}}}), 'needs "auth", or "username" and "password"'),
        (json.dumps({"auths": {"r.example": {"username": "ci", "password": "s3cret\r\nb"}}}), "control character"),
    ],
)
def test_a_credentials_file_that_does_not_parse_is_refused_naming_why(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(RegistryConfigError, match=problem) as refused:
        load_credentials(path)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(RegistryConfigError, match="cannot be read"):
        load_credentials(tmp_path / "missing.json")


def test_registry_keys_and_challenges() -> None:
    assert registry_key("registry-1.docker.io") == "docker.io"
    assert registry_key("LOCALHOST:5000") == "localhost:5000"
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"'
    )
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a:pull"}
    assert parse_challenge('Basic realm="registry"') == ("basic", {"realm": "registry"})


def test_tokens_are_cached_per_scope_until_shortly_before_expiry_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    cache = TokenCache()
    cache.put("r.example", "repository:a:pull", "t1", 300)
    cache.put("r.example", "repository:b:pull", "t2", None)  # no expires_in: the spec's 60 seconds
    assert cache.get("r.example", "repository:a:pull") == "t1"
    assert cache.get("r.example", "repository:a:pull,push") is None
    now[0] += 60 - auth.TOKEN_SKEW_SECONDS
    assert cache.get("r.example", "repository:b:pull") is None
    assert cache.get("r.example", "repository:a:pull") == "t1"
    cache.put("r.example", "repository:c:pull", "t3", 10**9)  # a day-long promise is cut to MAX_TOKEN_SECONDS
    now[0] += auth.MAX_TOKEN_SECONDS
    assert cache.get("r.example", "repository:c:pull") is None
    for index in range(auth.MAX_CACHED_TOKENS + 10):
        cache.put("r.example", f"repository:n{index}:pull", "t", 300)
    assert len(cache._tokens) == auth.MAX_CACHED_TOKENS
    assert cache.get("r.example", "repository:n0:pull") is None  # the oldest went first


@pytest.mark.parametrize(
    ("registry", "repository", "reference"),
    [
        ("r.example/../x", "app", "v1"),
        ("r.example", "../../v2/other", "v1"),
        ("r.example", "App", "v1"),
        ("r.example", "app", "v1/../../x"),
        ("r.example", "app", "sha256:" + "a" * 63),
        ("r.example", "app", "v1\n"),
    ],
)
def test_names_that_would_change_the_url_are_refused_before_any_request(
    registry: str, repository: str, reference: str
) -> None:
    with pytest.raises(OCIError):
        check_name(registry, repository, reference)


def test_digests_and_referrers_tags() -> None:
    digest = "sha512:" + "ab" * 64
    assert split_digest(digest) == ("sha512", "ab" * 64)
    assert referrers_tag(digest) == "sha512-" + "ab" * 32
    with pytest.raises(OCIError, match="is not sha256"):
        split_digest("sha256:" + "ab" * 32 + "\n")
