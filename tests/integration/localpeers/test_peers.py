"""The pinned Go peers are built and runnable (the admission and syncer planes rely on them)."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from localpeers.hub import free_port
from localpeers.peers import peer, pinned

pytestmark = pytest.mark.integration


def test_opa_is_the_pinned_version_and_serves_decisions_on_loopback() -> None:
    opa = peer("opa")
    version = subprocess.run([str(opa), "version"], capture_output=True, text=True, check=True).stdout
    assert f"Version: {pinned()['opa'][1].lstrip('v')}" in version

    port = free_port()
    server = subprocess.Popen(
        [str(opa), "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "opa did not become healthy"
            time.sleep(0.05)
        policy = 'package edge\n\nallowed if input.image == "signed"\n'
        assert httpx.put(f"{base}/v1/policies/edge", content=policy).status_code == 200
        answer = httpx.post(f"{base}/v1/data/edge/allowed", content=json.dumps({"input": {"image": "signed"}}))
        assert answer.json()["result"] is True
        answer = httpx.post(f"{base}/v1/data/edge/allowed", content=json.dumps({"input": {"image": "other"}}))
        assert "result" not in answer.json()
    finally:
        server.terminate()
        server.wait(timeout=10)
