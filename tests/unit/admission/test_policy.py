from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from admission.errors import ConfigError
from admission.policy import FailureMode, Mode, PolicySet
from tests.support.webhook import REPO_POLICIES, policy_dir


def test_repository_policies_load() -> None:
    policies = PolicySet.load(REPO_POLICIES)
    names = {p.name for p in policies.rego}
    assert {"disallow_latest_tag", "no_privileged", "allowed_repos", "require_labels"} <= names
    assert [lib.name for lib in policies.libraries] == ["lib"]
    modes = {p.name: (p.mode, p.failure) for p in policies.rego}
    assert modes["require_labels"] == (Mode.WARN, FailureMode.OPEN)
    assert modes["no_privileged"] == (Mode.ENFORCE, FailureMode.CLOSED)
    assert policies.exempt("kube-system")
    assert not policies.exempt("default")


def test_revision_changes_with_content(tmp_path: Path) -> None:
    first = PolicySet.load(policy_dir(tmp_path / "a")).revision
    changed = policy_dir(tmp_path / "b")
    (changed / "no_privileged" / "policy.yaml").write_text("name: no_privileged\nmode: warn\n")
    assert PolicySet.load(changed).revision != first


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"name": "Bad-Name"}, "must match"),
        ({"mode": "block"}, "mode 'block' is not one of"),
        ({"failure": "sometimes"}, "failure 'sometimes'"),
        ({"surprise": 1}, "unknown fields"),
        ({"type": "image-signature", "images": []}, "non-empty list"),
        ({"type": "image-signature", "images": ["*"]}, "needs keys or keyless"),
        ({"type": "image-signature", "images": ["*"], "keys": ["missing.pub"]}, "missing.pub"),
        ({"type": "image-signature", "images": ["*"], "keyless": {"trustedRoot": "x.json"}}, "needs trustedRoot and"),
        ({"type": "wasm"}, "is not rego, library or image-signature"),
        ({"match": {"kinds": "Pod"}}, "match.kinds must be a list"),
    ],
)
def test_policy_mistakes_are_named_at_load(tmp_path: Path, meta: dict[str, object], reason: str) -> None:
    folder = tmp_path / "p" / "broken"
    folder.mkdir(parents=True)
    (folder / "policy.yaml").write_text(yaml.safe_dump({"name": "broken", **meta}))
    (folder / "broken.rego").write_text("package edgetrust.admission.broken\n")
    with pytest.raises(ConfigError, match=reason):
        PolicySet.load(tmp_path / "p")


def test_rego_policy_without_rego_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "p" / "empty"
    folder.mkdir(parents=True)
    (folder / "policy.yaml").write_text("name: empty\n")
    with pytest.raises(ConfigError, match=r"needs a \.rego file"):
        PolicySet.load(tmp_path / "p")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PolicySet.load(tmp_path / "nowhere")
