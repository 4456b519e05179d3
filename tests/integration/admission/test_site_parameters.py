"""The shipped policy library names no registry: the webhook refuses to start on it until the site gives its
own (`edgetrust-admission serve --parameters site.yaml`), and then admits from those registries only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localpeers.opa_server import opa_server
from localpeers.tlsca import ServerCert, TestCA
from localpeers.webhook import REPO_POLICIES, pod, review, running_webhook

pytestmark = pytest.mark.integration

ADMISSION = str(Path(sys.executable).parent / "edgetrust-admission")


def serve(tls: ServerCert, *args: str) -> subprocess.CompletedProcess[str]:
    """The webhook's own command line; it stops at the policy check, before it listens or calls OPA."""
    argv = [ADMISSION, "serve", "--policy-dir", str(REPO_POLICIES), "--listen", "127.0.0.1:0", *args]
    argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_the_shipped_library_without_site_parameters_does_not_start(tmp_path: Path) -> None:
    tls = TestCA(tmp_path / "ca").issue("webhook")
    done = serve(tls)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert "allowed_repos/policy.yaml: parameters.repos is site-specific and not set" in done.stderr
    assert "--parameters" in done.stderr
    site = tmp_path / "site.yaml"
    site.write_text("allowed_repos: {repos: []}\n")  # empty: it would deny every pod
    assert "parameters.repos is site-specific and not set" in serve(tls, "--parameters", str(site)).stderr
    site.write_text("allowed_repos: {repo: [registry.retail.example/]}\n")
    done = serve(tls, "--parameters", str(site))
    assert done.returncode == 1
    assert f"{site}: allowed_repos.repo: the policy has no parameter 'repo'" in done.stderr


def test_with_the_site_parameters_only_the_site_registries_are_admitted(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("allowed_repos:\n  repos: [registry.retail.example/]\n")
    ca = TestCA(tmp_path / "ca")
    with (
        opa_server(tmp_path / "opa") as opa,
        running_webhook(tmp_path / "webhook", ca, policy_dir=REPO_POLICIES, parameters=site, opa_port=opa.port) as hook,
    ):
        ours = hook.review(review(pod("registry.retail.example/shop/app:1.0"), namespace="shop"))
        assert ours["allowed"], ours
        for image in ("localhost:5000/shop/app:1.0", "127.0.0.1:5000/shop/app:1.0", "registry.edge.example/a:1"):
            answer = hook.review(review(pod(image), namespace="shop"))
            assert not answer["allowed"], image
            assert "is not from an allowed registry" in answer["status"]["message"]
