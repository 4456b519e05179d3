"""Slowloris against the real webhook process (`edgetrust-admission serve`, with its OPA): idle TLS connections
sending half a request head must neither stop it answering the API server nor stay open past the deadline."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from localpeers.opa_server import OpaServer
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, review, webhook_process
from tests.support.slowloris import half_headers

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 8.0


def test_slowloris_thousand_half_headers_do_not_stop_the_webhook(
    test_ca: TestCA, opa: OpaServer, tmp_path: Path
) -> None:
    settings = {
        "policy_dir": policy_dir(tmp_path / "policies"),
        "opa_port": opa.port,
        "header_timeout_s": HEADER_TIMEOUT_S,
        "max_connections": 600,  # below the attack: the oldest connections still waiting for a head make room
    }
    with webhook_process(tmp_path / "webhook", test_ca, **settings) as webhook:
        port = int(webhook.url.rsplit(":", 1)[1])
        with half_headers("127.0.0.1", port, ca_file=test_ca.ca_file, count=1000) as attack:
            assert attack.opened == 1000, attack.failed[:3]
            with httpx.Client(base_url=webhook.url, verify=webhook.context, timeout=10) as http:
                assert http.get("/readyz").status_code == 200
                uid = str(uuid.uuid4())
                started = time.monotonic()
                answer = http.post(
                    "/validate", json=review(pod("registry.example/app:v1", security={"privileged": True}), uid=uid)
                )
                assert answer.status_code == 200
                assert time.monotonic() - started < 5
                verdict = answer.json()["response"]
                assert verdict["uid"] == uid
                assert verdict["allowed"] is False  # a real decision, not a fallback: the pod is privileged
                assert "privileged" in verdict["status"]["message"]
            closed = attack.wait_closed(timeout_s=HEADER_TIMEOUT_S + 10)
            assert closed == attack.opened, f"{attack.opened - closed} half-header connections left open"
            assert attack.closed_after_s() <= HEADER_TIMEOUT_S + 2
        with httpx.Client(base_url=webhook.url, verify=webhook.context, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
