"""What the webhook does when its peers fail: registry gone, OPA gone, OPA too slow.

Every case uses the real peer, stopped or made slow for real; nothing is simulated.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from localpeers.opa_server import opa_server
from localpeers.registry import running_registry
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, review, running_webhook

pytestmark = pytest.mark.integration


def test_registry_outage_admits_known_images_from_cache_and_fails_closed_for_strangers(
    tmp_path: Path, test_ca: TestCA
) -> None:
    with opa_server(tmp_path / "opa") as opa, ExitStack() as outlives_registry:
        with running_registry(tmp_path / "registry", test_ca) as registry:
            key, public = registry.cosign_keypair("k")
            digest = registry.push_image("closed/app", "v1", content=b"known")
            registry.cosign_sign(f"{registry.host}/closed/app@{digest}", key)
            host = registry.host
            signature = {
                "type": "image-signature",
                "keys": ["cosign.pub"],
                "files": {"cosign.pub": public.read_bytes()},
            }
            policies = policy_dir(
                tmp_path / "policies",
                rego=False,
                extra={
                    "closed_images": {**signature, "images": [f"{host}/closed/*"], "failure": "closed"},
                    "open_images": {**signature, "images": [f"{host}/open/*"], "failure": "open"},
                },
            )
            webhook = outlives_registry.enter_context(
                running_webhook(
                    tmp_path / "webhook",
                    test_ca,
                    policy_dir=policies,
                    opa_port=opa.port,
                    registry_ca_file=registry.ca_file,
                    tag_ttl_s=0.001,  # always ask the registry for tags, so the outage is seen
                )
            )
            assert webhook.review(review(pod(f"{host}/closed/app:v1")))["allowed"] is True
        # the registry process is gone now
        cached = webhook.review(review(pod(f"{host}/closed/app:v1")))
        assert cached["allowed"] is True
        assert any("admitted from the verification cache" in w for w in cached["warnings"])

        stranger = webhook.review(review(pod(f"{host}/closed/never-seen:v1")))
        assert stranger["allowed"] is False
        assert "undecided, failing closed" in stranger["status"]["message"]
        assert host in stranger["status"]["message"]

        lenient = webhook.review(review(pod(f"{host}/open/never-seen:v1")))
        assert lenient["allowed"] is True
        assert any("[open_images] admitted undecided (failure mode open)" in w for w in lenient["warnings"])

        with webhook.client() as client:
            metrics = client.get("/metrics").text
        assert 'edgetrust_admission_registry_errors_total{code="registry_unreachable"}' in metrics
        assert "edgetrust_admission_offline_admits_total 1.0" in metrics


def test_opa_down_fails_closed_but_never_for_kube_system(tmp_path: Path, test_ca: TestCA) -> None:
    with ExitStack() as outlives_opa:
        with opa_server(tmp_path / "opa") as doomed:
            webhook = outlives_opa.enter_context(
                running_webhook(
                    tmp_path / "webhook", test_ca, policy_dir=policy_dir(tmp_path / "p"), opa_port=doomed.port
                )
            )
        answer = webhook.review(review(pod("127.0.0.1:5000/app:v1")))
        assert answer["allowed"] is False
        assert "[no_privileged] undecided, failing closed: OPA could not decide" in answer["status"]["message"]
        # require_labels is warn-mode with failure open: it becomes a warning, not a denial
        assert any("[require_labels] admitted undecided" in w for w in answer["warnings"])
        assert webhook.review(review(pod("127.0.0.1:5000/app:v1"), namespace="kube-system"))["allowed"] is True


SLOW_REGO = """package edgetrust.admission.slow

import rego.v1

# about nine million iterations: seconds of OPA time for every review
violation contains {"msg": "slow"} if {
	count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000)]) < 0
}
"""


def test_slow_opa_times_out_below_the_api_servers_deadline(tmp_path: Path, test_ca: TestCA) -> None:
    policies = policy_dir(
        tmp_path / "p", rego=False, extra={"slow": {"mode": "enforce", "files": {"slow.rego": SLOW_REGO}}}
    )
    with (
        opa_server(tmp_path / "opa") as opa,
        running_webhook(
            tmp_path / "webhook", test_ca, policy_dir=policies, opa_port=opa.port, opa_timeout_s=0.3
        ) as webhook,
    ):
        started = time.monotonic()
        answer = webhook.review(review(pod("127.0.0.1:5000/app:v1")))
        elapsed = time.monotonic() - started
    assert answer["allowed"] is False
    assert "OPA did not answer within 0.3s" in answer["status"]["message"]
    assert elapsed < 2.0  # the API server's own webhook timeout is 10 s; we answer long before it
