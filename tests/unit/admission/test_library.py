"""The default policy library (admission/library.py): what `--default-library` enforces with no file of the user's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from admission.errors import ConfigError
from admission.library import default_library, packaged_library
from admission.policy import Mode, PolicySet
from admission.server import build_controller
from admission.settings import AdmissionSettings
from localpeers.webhook import REPO_POLICIES


def test_the_packaged_library_is_the_repository_library() -> None:
    packaged = packaged_library()
    assert packaged.resolve() == REPO_POLICIES.resolve()
    assert {p.parent.name for p in packaged.glob("*/policy.yaml")} == {
        p.parent.name for p in REPO_POLICIES.glob("*/policy.yaml")
    }


def test_without_site_values_the_allowlist_is_left_out_by_name_and_the_rest_enforced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgetrust.admission"):
        library = default_library(None, work=tmp_path)
    assert len(library.left_out) == 1
    assert library.left_out[0].startswith("allowed_repos: needs the site's repos")
    assert "webhook.parameters.allowed_repos.repos" in library.left_out[0]
    assert "allowed_repos is not enforced" in caplog.text
    policies = PolicySet.load(library.directory)
    modes = {p.name: p.mode for p in policies.rego}
    assert "allowed_repos" not in modes
    assert modes["no_privileged"] == Mode.ENFORCE
    assert modes["disallow_latest_tag"] == Mode.ENFORCE
    assert modes["run_as_non_root"] == Mode.WARN
    assert [lib.name for lib in policies.libraries] == ["lib"]
    assert not list(library.directory.rglob("*_test.rego"))


def test_site_values_turn_the_allowlist_on(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("allowed_repos: {repos: [registry.retail.example/]}\n")
    library = default_library(site, work=tmp_path)
    assert library.left_out == ()
    repos = {p.name: p.parameters for p in PolicySet.load(library.directory, parameters=site).rego}["allowed_repos"]
    assert repos == {"repos": ["registry.retail.example/"]}


def test_an_allowlist_the_site_names_but_leaves_empty_still_stops_the_start(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("allowed_repos: {repos: []}\n")  # the site meant to set it: not silently left out
    library = default_library(site, work=tmp_path)
    assert library.left_out == ()
    with pytest.raises(ConfigError, match=r"parameters\.repos is site-specific and not set"):
        PolicySet.load(library.directory, parameters=site)


def test_a_parameters_file_that_does_not_parse_is_a_config_error(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="must map policy names"):
        default_library(site, work=tmp_path)


def test_the_default_library_and_a_bundle_are_two_policy_sources(tmp_path: Path) -> None:
    settings = AdmissionSettings(default_library=True, bundle=tmp_path / "bundle.tar.gz", bundle_keys=("k=k.pem",))
    with pytest.raises(ConfigError, match="--default-library and --bundle both given"):
        build_controller(settings)


def test_the_webhook_built_on_the_default_library_enforces_it() -> None:
    controller = build_controller(AdmissionSettings(default_library=True))
    names = {p.name for p in controller.policies.rego}
    assert {"no_privileged", "no_host_path", "disallow_latest_tag"} <= names
    assert "allowed_repos" not in names
