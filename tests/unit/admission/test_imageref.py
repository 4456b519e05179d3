from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st

from admission.errors import ImageReferenceError
from admission.imageref import canonical_image_globs, parse_image_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
        ("acme/app:v2", "docker.io", "acme/app", "v2", None),
        ("ghcr.io/acme/app", "ghcr.io", "acme/app", "latest", None),
        ("127.0.0.1:5000/edge/app:v1", "127.0.0.1:5000", "edge/app", "v1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("registry.local:5000/app", "registry.local:5000", "app", "latest", None),
        (f"registry.local:5000/app@{DIGEST}", "registry.local:5000", "app", None, DIGEST),
        (f"registry.local:5000/app:v1@{DIGEST}", "registry.local:5000", "app", "v1", DIGEST),
        ("[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
        ("quay.io/a/b/c/d:x_y-z.1", "quay.io", "a/b/c/d", "x_y-z.1", None),
        ("Registry.Example.com/app:v1", "registry.example.com", "app", "v1", None),
        ("LOCALHOST:5000/app:v1", "localhost:5000", "app", "v1", None),
        ("Foo/app", "foo", "app", "latest", None),
        ("registry.example:443/app", "registry.example", "app", "latest", None),
        ("registry.example:0443/app", "registry.example", "app", "latest", None),
        ("127.0.0.1:05000/app", "127.0.0.1:5000", "app", "latest", None),
        ("registry.example:80/app", "registry.example:80", "app", "latest", None),
        ("index.docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("registry-1.docker.io/acme/app", "docker.io", "acme/app", "latest", None),
        ("Registry.Hub.Docker.com:443/library/nginx", "docker.io", "library/nginx", "latest", None),
        ("docker.io:5000/nginx", "docker.io:5000", "nginx", "latest", None),
        ("[0:0::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ],
)
def test_references_resolve_like_the_runtime(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_image_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Nginx:1", "must be lowercase"),
        ("ghcr.io/Acme/app:v1", "must be lowercase"),
        ("app@sha256:1234", "is not sha256"),
        ("app@md5:" + "a" * 32, "is not sha256"),
        ("app:", "is not a valid tag"),
        ("app:-bad", "is not a valid tag"),
        ("app:" + "a" * 129, "is not a valid tag"),
        ("app//x", "not a valid repository path"),
        ("a" * 5000, "over the 4096 limit"),
        ("bad_host:99999999/app", "is not a host"),
        ("registry.example:0/app", "out of range"),
        ("registry.example:70000/app", "out of range"),
        ("127.1/app", "not a dotted-quad"),
        ("0177.0.0.1/app", "not a dotted-quad"),
        ("[::g]/app", "is not a host"),
    ],
)
def test_odd_references_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ImageReferenceError, match=reason):
        parse_image_reference(text)


def test_pinned_form_drops_the_tag() -> None:
    ref = parse_image_reference("127.0.0.1:5000/edge/app:v1")
    assert ref.with_digest(DIGEST) == f"127.0.0.1:5000/edge/app@{DIGEST}"


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_our_error(text: str) -> None:
    try:
        ref = parse_image_reference(text)
    except ImageReferenceError:
        return
    assert ref.repository
    assert ref.tag or ref.digest


@pytest.mark.parametrize(
    ("spellings", "canonical"),
    [
        (
            ["nginx", "docker.io/nginx", "index.docker.io/library/nginx", "docker.io/library/nginx"],
            "docker.io/library/nginx",
        ),
        (["LOCALHOST:5000/edge/*", "localhost:5000/edge/*", "Localhost:05000/edge/*"], "localhost:5000/edge/*"),
        (["registry.example:443/acme/*", "REGISTRY.example/acme/*"], "registry.example/acme/*"),
        (["registry-1.docker.io/acme/*", "docker.io/acme/*", "acme/*"], "docker.io/acme/*"),
    ],
)
def test_policy_globs_written_any_way_are_one_glob(spellings: list[str], canonical: str) -> None:
    for spelling in spellings:
        assert canonical in canonical_image_globs(spelling), spelling


@pytest.mark.parametrize(
    ("glob", "image"),
    [
        ("*", "ghcr.io/acme/app"),
        ("*", "nginx"),
        ("*/edgetrust/*", "edgetrust/app"),
        ("*.docker.io/*", "index.docker.io/acme/app"),
        ("registry.example:*/x/*", "registry.example:443/x/app"),
        ("docker.io/*", "nginx"),
    ],
)
def test_wildcard_globs_never_cover_less_than_as_written(glob: str, image: str) -> None:
    name = parse_image_reference(image).name
    assert any(fnmatchcase(name, g) for g in canonical_image_globs(glob))


@pytest.mark.parametrize(
    ("glob", "reason"),
    [
        ("ghcr.io/Acme/*", "uppercase"),
        ("nginx:1.27", "names a tag"),
        ("nginx@" + DIGEST, "without digest"),
        ("", "without digest"),
    ],
)
def test_globs_that_could_never_match_are_refused(glob: str, reason: str) -> None:
    with pytest.raises(ImageReferenceError, match=reason):
        canonical_image_globs(glob)
