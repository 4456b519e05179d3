"""The shared Kubernetes client (edgetrust/_internal/kube.py) against a small misbehaving API server on
loopback: answers that are not lists, continue tokens that never end, answers over the bound, error statuses
without a Status object; a token file followed as it changes; settings refused before anything is sent; and
the package not imported until a connection is made. The real kube-apiserver: tests/integration/test_kube_access.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgetrust._internal import kube as kubeapi

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def api_server(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(handler: Handler, call: Callable[[kubeapi.KubeConnection], Awaitable[Any]], **options: Any) -> Any:
    async def scenario() -> Any:
        async with api_server(handler) as url:
            connection = kubeapi.KubeConnection(kubeapi.Direct(url), **options)
            try:
                return await call(connection)
            finally:
                await connection.aclose()

    return asyncio.run(scenario())


def list_namespaces(max_items: int = 100) -> Callable[[kubeapi.KubeConnection], Awaitable[kubeapi.KubeList]]:
    return lambda c: c.list_all("/api/v1/namespaces", what="listing namespaces", max_items=max_items, page_size=2)


def namespace(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}}


def test_continue_tokens_that_never_end_are_refused() -> None:
    asked: list[str] = []

    async def looping(request: web.Request) -> web.Response:
        asked.append(request.query.get("continue", ""))
        return web.json_response({"kind": "NamespaceList", "items": [], "metadata": {"continue": "same"}})

    with pytest.raises(kubeapi.KubeAnswerError, match="continue tokens do not end"):
        run(looping, list_namespaces())
    assert asked == ["", "same"]


def test_a_page_without_a_list_is_refused_not_skipped() -> None:
    async def broken(request: web.Request) -> web.Response:
        if "continue" not in request.query:
            return web.json_response({"items": [namespace("a"), namespace("b")], "metadata": {"continue": "2"}})
        return web.json_response({"items": ["not an object"]})

    with pytest.raises(kubeapi.KubeAnswerError, match="not a Kubernetes list"):
        run(broken, list_namespaces())


def test_the_limit_counts_every_page_and_asks_for_one_more_only() -> None:
    limits: list[str] = []

    async def pages(request: web.Request) -> web.Response:
        limits.append(request.query["limit"])
        start = int(request.query.get("continue", "0"))
        items = [namespace(f"ns-{i}") for i in range(start, min(start + int(request.query["limit"]), 5))]
        more = {"continue": str(start + len(items))} if start + len(items) < 5 else {}
        return web.json_response({"apiVersion": "v1", "kind": "NamespaceList", "items": items, "metadata": more})

    found = run(pages, list_namespaces(max_items=5))
    assert [item["metadata"]["name"] for item in found.items] == [f"ns-{i}" for i in range(5)]
    assert found.pages == 3
    limits.clear()
    with pytest.raises(kubeapi.KubeListLimitError, match="more than 4 objects"):
        run(pages, list_namespaces(max_items=4))
    assert limits == ["2", "2", "1"]  # the third page asks for the one object that proves the list too long


def test_remaining_item_count_refuses_before_the_rest_is_read() -> None:
    asked: list[int] = []

    async def counted(request: web.Request) -> web.Response:
        asked.append(1)
        meta = {"continue": "next", "remainingItemCount": 1000}
        return web.json_response({"items": [namespace("a"), namespace("b")], "metadata": meta})

    with pytest.raises(kubeapi.KubeListLimitError):
        run(counted, list_namespaces(max_items=100))
    assert len(asked) == 1


def test_an_answer_over_the_bound_is_refused() -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"items": [' + b'{"metadata": {}},' * 10_000)
        return response

    with pytest.raises(kubeapi.KubeAnswerError, match="passes the limit \\(4096 bytes\\)"):
        run(huge, list_namespaces(), max_answer_bytes=4096)


def test_an_error_status_names_the_api_servers_reason() -> None:
    async def refusing(request: web.Request) -> web.Response:
        if request.path.endswith("/json"):
            status = {"kind": "Status", "status": "Failure", "message": "namespaces is forbidden", "code": 403}
            return web.json_response(status, status=403)
        return web.Response(status=502, text="bad gateway from a proxy")

    def get(path: str) -> Callable[[kubeapi.KubeConnection], Awaitable[Any]]:
        return lambda c: c.request("GET", path, what="reading")

    with pytest.raises(kubeapi.KubeStatusError) as forbidden:
        run(refusing, get("/json"))
    assert (forbidden.value.status, forbidden.value.reason) == (403, "namespaces is forbidden")
    with pytest.raises(kubeapi.KubeStatusError) as proxy:
        run(refusing, get("/text"))
    assert (proxy.value.status, proxy.value.reason) == (502, "HTTP 502: bad gateway from a proxy")


def test_a_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({})

    async def scenario(url: str) -> None:
        # a token is only sent over https; the configuration is built by hand to look at the hook alone
        connection = kubeapi.KubeConnection(kubeapi.Direct(url))
        api = await connection._client()
        kubeapi._TokenFile(token).follow(api.configuration)
        try:
            await connection.request("GET", "/api", what="one")
            token.write_text("second-and-longer")
            await connection.request("GET", "/api", what="two")
            token.unlink()  # gone for a moment: the last token is kept, the API server judges it
            await connection.request("GET", "/api", what="three")
        finally:
            await connection.aclose()

    async def main() -> None:
        async with api_server(echo) as url:
            await scenario(url)

    asyncio.run(main())
    assert seen == ["Bearer first", "Bearer second-and-longer", "Bearer second-and-longer"]


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        (kubeapi.Direct("https://127.0.0.1:1", "t", token_file=Path("/t")), "a token or a token file, not both"),
        (kubeapi.Direct("http://127.0.0.1:1", "t"), "a bearer token is only sent over https"),
        (kubeapi.Direct("https://127.0.0.1:1", client_cert=Path("/c")), "a client certificate needs its key"),
        (kubeapi.Direct("https://127.0.0.1:1", ca_file=Path("/no/ca.pem")), "/no/ca.pem does not exist"),
        (kubeapi.Kubeconfig(Path("/no/kubeconfig")), "the kubeconfig /no/kubeconfig does not exist"),
    ],
)
def test_unusable_settings_are_refused_before_anything_is_sent(source: kubeapi.Source, refusal: str) -> None:
    async def connect() -> None:
        await kubeapi.api_client(source)

    with pytest.raises(kubeapi.KubeConfigError, match=refusal):
        asyncio.run(connect())


def test_a_kubeconfig_without_the_named_context_or_not_yaml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text('{"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}')
    garbled = tmp_path / "garbled"
    garbled.write_text("clusters: [unclosed\n")

    async def connect(source: kubeapi.Source) -> None:
        await kubeapi.api_client(source)

    with pytest.raises(kubeapi.KubeConfigError, match="elsewhere"):
        asyncio.run(connect(kubeapi.Kubeconfig(config, context="elsewhere")))
    with pytest.raises(kubeapi.KubeConfigError, match="is not a usable kubeconfig"):
        asyncio.run(connect(kubeapi.Kubeconfig(garbled)))


def test_neither_the_package_nor_aiohttp_is_imported_before_the_first_request() -> None:
    probe = (
        "import sys\n"
        "from edgetrust._internal import kube\n"
        "kube.KubeConnection(kube.Direct('https://127.0.0.1:1'))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kubernetes', 'aiohttp'))))\n"
    )
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "[]"


def test_in_cluster_url_reads_the_service_variables_and_falls_back_to_the_dns_name() -> None:
    """A cluster without DNS (the edge, the real-node tests) still reaches its API server from a pod."""
    assert kubeapi.in_cluster_url({"KUBERNETES_SERVICE_HOST": "198.18.128.1", "KUBERNETES_SERVICE_PORT": "443"}) == (
        "https://198.18.128.1:443"
    )
    assert kubeapi.in_cluster_url({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}) == (
        "https://[fd00::1]:443"
    )
    assert kubeapi.in_cluster_url({"KUBERNETES_SERVICE_HOST": "198.18.128.1"}) == "https://kubernetes.default.svc"
    assert kubeapi.in_cluster_url({}) == "https://kubernetes.default.svc"
