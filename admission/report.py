"""Each webhook replica tells the hub what it enforces: its pod, the admission revision and counter in force
(`AdmissionController.status`, what /readyz shows) and its last refused swap, at once on a change and as a
heartbeat, so the hub's rollout counts the cluster applied only when every live replica is (a replica that
stops reporting drops out there after a few heartbeats).

It speaks as the cluster: the same X.509-SVID as the syncer (`spiffe://<td>/cluster/<c>`, issued to the
webhook's service account by the node agent, `trustctl fleet cluster add`), from the Workload API through
`edgetrust.spiffe.workload.WorkloadSvid`, renewed without a restart; the hub takes the cluster from that SVID,
never from the report. The HTTP client and the retry policy are the syncer's (`edgetrust._internal.hubclient`,
`retry.Backoff`): an unreachable hub is retried with jittered backoff, and reporting never touches admission:
a review is decided the same whether or not the hub hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from edgetrust._internal import hubclient
from edgetrust._internal.retry import Backoff, retry_after_seconds

if TYPE_CHECKING:
    import aiohttp

    from admission.swap import SwapReport
    from edgetrust.spiffe.workload import WorkloadSvid

log = logging.getLogger("edgetrust.admission.report")

PATH = "/v1/policy/admission"
HEARTBEAT_S = 30.0
#: how often the status in force is compared with the last one sent (in process: a field read)
CHECK_S = 1.0
TIMEOUT_S = 10.0
#: the hub's answer is a small JSON object
ANSWER_LIMIT = 4096


class StatusReporter:
    """Reports `status()` for `pod` to the hub at `hub_url` over mTLS with `context` (a WorkloadSvid's, which
    always presents the current SVID, or the fallback's files)."""

    def __init__(
        self,
        status: Callable[[], SwapReport],
        *,
        hub_url: str,
        context: ssl.SSLContext,
        pod: str,
        workload: WorkloadSvid | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        check_s: float = CHECK_S,
    ) -> None:
        self._status = status
        self._url = hubclient.check_url(hub_url)
        self._context = context
        self._pod = pod
        self._workload = workload
        self._heartbeat_s = heartbeat_s
        self._check_s = check_s
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # reports the hub accepted
        self.last_error = ""

    def body(self) -> dict[str, Any]:
        report = asdict(self._status())
        return {"pod": self._pod, **report}

    def start(self) -> None:
        if self._workload is not None:
            self._workload.bind(asyncio.get_running_loop())
        self._task = asyncio.create_task(self._run(), name="admission-status-reporter")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._workload is not None:
            self._workload.close()

    async def _run(self) -> None:
        backoff = Backoff(base_s=1.0, cap_s=self._heartbeat_s)
        sent: dict[str, Any] | None = None
        due = 0.0
        async with hubclient.session(self._url, self._context) as http:
            while True:
                body = self.body()
                if body != sent or time.monotonic() >= due:
                    try:
                        await self.send(http, body)
                    except hubclient.HubCallError as exc:
                        self.last_error = str(exc)
                        waited = await backoff.wait(retry_after_seconds(exc.retry_after))
                        log.warning("admission status not reported (again in %.1f s): %s", waited, exc)
                        continue
                    backoff.reset()
                    sent, due = body, time.monotonic() + self._heartbeat_s
                await asyncio.sleep(self._check_s)

    async def send(self, http: aiohttp.ClientSession, body: dict[str, Any]) -> None:
        """One report; HubCallError when the hub did not take it."""
        if self._workload is not None:
            from edgetrust.spiffe.workload import WorkloadSvidError

            try:
                self._workload.check_open()
            except WorkloadSvidError as exc:  # nothing renews the SVID any more: said on every try
                raise hubclient.HubCallError(hubclient.HubFailure.LOCAL, exc.diagnostics()) from exc
        answer = await hubclient.fetch(
            http,
            "POST",
            PATH,
            timeout_s=TIMEOUT_S,
            limit=ANSWER_LIMIT,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if not 200 <= answer.status < 300:
            raise hubclient.failure_of(answer.status, answer.headers, answer.body, "admission status report")
        self.sent += 1
        self.last_error = ""
