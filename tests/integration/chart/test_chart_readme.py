"""charts/edgetrust/README.md as a user runs it: its `sh` blocks in order, in an empty working directory, with
the pinned helm and no `--kube-version` (the `helm install` block runs in test_chart.py, into a real API server).
What they render must be the user's: their key, their bundle, the hub of the release."""

from __future__ import annotations

import base64
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.chart.support import readme_blocks, run_readme_block

pytestmark = pytest.mark.integration


def _objects(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(path.read_text()) if d}


def _flags(block: str) -> list[str]:
    """A helm line's values flags (-f, --set, --set-file), in order."""
    words = shlex.split(block.split(">")[0])
    return [f"{w} {words[i + 1]}" for i, w in enumerate(words) if w in ("-f", "--set", "--set-file")]


def test_the_readmes_commands_run_as_written_and_render_the_users_own(tmp_path: Path) -> None:
    blocks = readme_blocks()
    assert not any("--kube-version" in b for b in blocks)
    for block in blocks:
        if not block.startswith("helm install"):
            run_readme_block(block, tmp_path)

    site = _objects(tmp_path / "edgetrust.yaml")
    assert {("Deployment", "edgetrust-webhook"), ("Deployment", "edgetrust-syncer")} <= site.keys()
    policy = site[("ConfigMap", "edgetrust-webhook-policy")]
    assert base64.b64decode(policy["binaryData"]["bundle.tar.gz"]) == (tmp_path / "bundle.tar.gz").read_bytes()
    assert policy["data"] == {"key-ci-1": (tmp_path / "ci-1.pub").read_text()}
    keys = site[("ConfigMap", "edgetrust-syncer-keys")]
    assert keys["data"] == {"ci-1.pem": (tmp_path / "ci-1.pub").read_text()}

    hub = _objects(tmp_path / "hub-manifests.yaml")
    assert ("Service", "edgetrust-hub") in hub
    agent = hub[("DaemonSet", "edgetrust-node-agent")]["spec"]["template"]["spec"]["containers"][0]
    assert "--hub=https://edgetrust-hub.edgetrust-system.svc:8443" in agent["args"]


def test_the_install_line_gives_the_values_the_template_line_renders() -> None:
    blocks = readme_blocks()
    template = next(b for b in blocks if b.startswith("helm template edgetrust") and "site.yaml" in b)
    install = next(b for b in blocks if b.startswith("helm install") and "site.yaml" in b)
    assert _flags(install) == _flags(template)
    # one list of keys: the syncer's verify the seed bundle in the webhook too (webhook.followBundles)
    assert "--set-file syncer.verificationKeys.ci-1=ci-1.pub" in _flags(install)
    assert not any("webhook.bundleKeys" in flag for flag in _flags(install))
