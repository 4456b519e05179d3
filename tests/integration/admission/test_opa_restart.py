"""What an OPA outage means for a running webhook: /readyz says "not ready" with the command that starts OPA
(the pod leaves the Service's endpoints; reviews fail closed meanwhile), and an OPA that comes back empty (a
restarted sidecar) is given the policies again on the next probe, so reviews are decided again without a
webhook restart."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from localpeers.opa_server import opa_server
from localpeers.tlsca import TestCA
from localpeers.webhook import pod, policy_dir, review, running_webhook


def test_opa_gone_is_not_ready_and_a_restarted_opa_is_reloaded(tmp_path: Path, test_ca: TestCA) -> None:
    with ExitStack() as outlives_opa:
        with opa_server(tmp_path / "opa") as first:
            port = first.port
            webhook = outlives_opa.enter_context(
                running_webhook(tmp_path / "webhook", test_ca, policy_dir=policy_dir(tmp_path / "p"), opa_port=port)
            )
            with webhook.client() as client:
                assert client.get("/readyz").status_code == 200
        with webhook.client() as client:
            gone = client.get("/readyz")
        assert gone.status_code == 503
        assert gone.json()["reason"].startswith(f"OPA is not answering at http://127.0.0.1:{port} (start it: opa run")
        privileged = review(pod("127.0.0.1:5000/app:v1", security={"privileged": True}))
        assert webhook.review(privileged)["allowed"] is False  # fails closed meanwhile

        with opa_server(tmp_path / "opa-again", port=port):  # the sidecar restarted: an empty OPA
            with webhook.client() as client:
                back = client.get("/readyz")
            assert back.status_code == 200, back.text
            decided = webhook.review(privileged)
            assert decided["allowed"] is False
            assert "[no_privileged] container c0 is privileged" in decided["status"]["message"], decided
            assert "undecided" not in decided["status"]["message"], decided
