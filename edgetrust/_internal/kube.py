"""Kubernetes API access, written once for every deployable that talks to an API server (the syncer, the
webhook's inventory, the node agent's pod lookup).

Built on the `kubernetes` package's asyncio client, `kubernetes.aio` (every caller here is async): it reads
kubeconfig files and in-cluster settings, holds the TLS context and the connection pool. Requests go through
`ApiClient.param_serialize`/`call_api` with plain JSON bodies, not the generated models: the callers compare
and trim dicts, and a model round trip would cost time and drop fields the models do not know. Not
`kubernetes_asyncio`: it imports all of its ~770 generated model modules up front (+38 MiB RSS in the syncer,
which then passed its 100 MiB bound under a 300 MiB answer); `kubernetes.aio` loads models on use (+20 MiB).

What this module adds, because the package does not do it, or not the way a security component needs:
- **Where and who** (`Source`): a kubeconfig file (`Kubeconfig`), the pod's service account (`InCluster`), or
  settings given directly (`Direct`: URL, CA, a token, a token file or a client certificate; flags and tests).
- **Token refresh**: bound service-account tokens are projected files that the kubelet replaces well before
  they expire (an hour by default), swapping a `..data` symlink. A token file is re-read as soon as it changed
  (one stat per request). The package's own in-cluster refresh (`try_refresh_token`, kubernetes 37.0.2)
  re-reads the file only once a minute has passed since the last read, whatever happened to it, and keeps a
  trailing newline; the package's loader is used for finding the API server, not for the token.
- **Pagination that never returns part of a list** (`list_all`): page by page with `limit`/`continue`, and a
  list longer than the caller's limit raises `KubeListLimitError`; a cut list is never handed back.
- **Bounded answers**: a body over `max_answer_bytes` is refused, never read whole.
- **Server-side apply** (`apply`): the package has no first-class SSA; a PATCH with
  `application/apply-patch+yaml`, `fieldManager` and `force` exactly as the caller asks.
- **One error family** (`KubeAccessError`): the package's exceptions and aiohttp's stop here; each caller turns
  these into its own package's errors at its boundary.

`kubernetes` is imported on first use, not with this module: `trustctl agent run --help` and the device side
must not load it (about 0.5 s and 20 MiB).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrust._internal.bounded import CHUNK_BYTES, BoundedReadError, aread_bounded

log = logging.getLogger("edgetrust.kube")

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
APPLY_PATCH = "application/apply-patch+yaml"
#: one answer (a page of a list, an object): pages of 500 objects with managedFields stay well below this
MAX_ANSWER_BYTES = 32 * 1024 * 1024
PAGE_SIZE = 500

Query = Sequence[tuple[str, str]]


class KubeAccessError(Exception):
    """Talking to the API server failed; the caller converts it into its own package's error."""


class KubeConfigError(KubeAccessError):
    """No usable configuration: a missing or empty kubeconfig, token or CA file, no in-cluster environment."""


class KubeTransportError(KubeAccessError):
    """The API server could not be reached, or the connection broke or timed out."""


class KubeStatusError(KubeAccessError):
    """The API server answered with an error status; `reason` is its own message (a Status object's)."""

    def __init__(self, what: str, status: int, reason: str) -> None:
        super().__init__(f"{what}: the API server answered {status}: {reason}")
        self.status = status
        self.reason = reason


class KubeAnswerError(KubeAccessError):
    """The answer is not what the API server sends: not JSON, not an object, too big, or a list that loops."""


class KubeListLimitError(KubeAccessError):
    """A list holds more objects than the caller's limit: refused whole, never cut at the limit."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"{what}: more than {limit} objects, the limit; refused rather than cut")
        self.limit = limit


class _TokenFile:
    """A bearer token read from a file, and read again whenever the file changed (projected tokens rotate).

    When the file cannot be read for a moment the last token is kept: the API server still judges it, and
    refuses it once it has expired; nothing is let through on our side.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int, int, int] | None = None
        self._token = ""
        if not self._read():
            raise KubeConfigError(f"the token file {path} is missing, unreadable or empty")

    def _read(self) -> bool:
        try:
            stat = os.stat(self._path)
            seen = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if seen == self._seen:
                return True
            token = self._path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            if self._token:
                log.warning("the token file %s cannot be read, keeping the last token: %s", self._path, exc)
            return False
        if not token:
            return False
        self._seen, self._token = seen, token
        return True

    def follow(self, configuration: Any) -> None:
        """Put the token on `configuration` now and before every request (the package's refresh hook)."""

        def refresh(config: Any, *_: Any) -> None:
            self._read()
            config.api_key["BearerToken"] = f"Bearer {self._token}"

        configuration.refresh_api_key_hook = refresh
        refresh(configuration)


@dataclass(frozen=True, slots=True)
class Kubeconfig:
    """A kubeconfig file (kubectl's), and optionally one of its contexts instead of the current one.

    Its credentials are taken as the file gives them (a token, a token file read once, a client certificate,
    an exec plugin run once); the file is never written back.
    """

    path: Path
    context: str | None = None

    async def configure(self, configuration: Any) -> None:
        import yaml

        config = _package("kubernetes.aio.config")

        if not self.path.is_file():
            raise KubeConfigError(f"the kubeconfig {self.path} does not exist")
        try:
            await config.load_kube_config(
                config_file=str(self.path),
                context=self.context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (yaml.YAMLError, AssertionError) as exc:  # the package asserts what it expects of the file
            raise KubeConfigError(f"the kubeconfig {self.path} is not a usable kubeconfig: {exc}") from exc

    def describe(self) -> str:
        return f"kubeconfig {self.path}" + (f" (context {self.context})" if self.context else "")


@dataclass(frozen=True, slots=True)
class InCluster:
    """The pod's own service account: KUBERNETES_SERVICE_HOST/PORT, the CA and the (rotating) token file."""

    account_dir: Path = SERVICE_ACCOUNT
    #: the environment to find the API server in; None for the process's
    environ: Mapping[str, str] | None = None

    async def configure(self, configuration: Any) -> None:
        loader = _package("kubernetes.aio.config.incluster_config").InClusterConfigLoader(
            token_filename=str(self.account_dir / "token"),
            cert_filename=str(self.account_dir / "ca.crt"),
            try_refresh_token=False,  # the token is followed by _TokenFile, see the module's docstring
            environ=dict(os.environ if self.environ is None else self.environ),
        )
        loader.load_and_set(configuration)
        _TokenFile(self.account_dir / "token").follow(configuration)

    def describe(self) -> str:
        return f"the service account in {self.account_dir}"


def in_cluster_url(environ: Mapping[str, str] | None = None) -> str:
    """The API server's URL from inside a pod: KUBERNETES_SERVICE_HOST/PORT, which the kubelet sets in every
    container (as client-go's InClusterConfig reads them), else https://kubernetes.default.svc. The variables
    come first because the name needs cluster DNS, which an edge cluster may run without."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return "https://kubernetes.default.svc"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Direct:
    """An API server and credentials given directly (command-line flags, tests): a fixed token, a token file
    (followed as it rotates), a client certificate and key, or none of them (anonymous)."""

    url: str
    token: str | None = None
    ca_file: Path | None = None
    token_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    async def configure(self, configuration: Any) -> None:
        if self.token is not None and self.token_file is not None:
            raise KubeConfigError("give a token or a token file, not both")
        if (self.client_cert is None) != (self.client_key is None):
            raise KubeConfigError("a client certificate needs its key, and a key its certificate")
        credentials = self.token is not None or self.token_file is not None
        if credentials and not self.url.startswith("https://"):
            raise KubeConfigError(f"{self.url}: a bearer token is only sent over https")
        for path in (self.ca_file, self.client_cert, self.client_key):
            if path is not None and not path.is_file():
                raise KubeConfigError(f"{path} does not exist")
        configuration.host = self.url.rstrip("/")
        configuration.ssl_ca_cert = str(self.ca_file) if self.ca_file is not None else None
        if self.client_cert is not None and self.client_key is not None:
            configuration.cert_file, configuration.key_file = str(self.client_cert), str(self.client_key)
        if self.token is not None:
            configuration.api_key["BearerToken"] = f"Bearer {self.token}"
        elif self.token_file is not None:
            _TokenFile(self.token_file).follow(configuration)

    def describe(self) -> str:
        return self.url


Source = Kubeconfig | InCluster | Direct


async def api_client(source: Source, *, user_agent: str = "edgetrust") -> Any:
    """A `kubernetes.aio` ApiClient for `source` (its aiohttp session opens on the first request). Typed Any:
    the package's generated client is mostly untyped."""
    client = _package("kubernetes.aio.client")
    config_exception = _package("kubernetes.aio.config").ConfigException

    configuration = client.Configuration()
    try:
        await source.configure(configuration)
        api = client.ApiClient(configuration)
    except KubeConfigError:
        raise
    except (config_exception, OSError, ValueError, KeyError, TypeError) as exc:
        raise KubeConfigError(f"{source.describe()}: {exc}") from exc
    api.user_agent = user_agent
    return api


@dataclass(frozen=True, slots=True)
class KubeList:
    """Every object of a list, from all its pages."""

    api_version: str
    kind: str  # the list's kind, e.g. NamespaceList
    items: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 1


class KubeConnection:
    """One API server, reached lazily (the ApiClient is made on the first request, in the caller's loop)."""

    def __init__(
        self,
        source: Source,
        *,
        timeout_s: float = 10.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        user_agent: str = "edgetrust",
    ) -> None:
        self.source = source
        self._timeout_s = timeout_s
        self._max_answer_bytes = max_answer_bytes
        self._user_agent = user_agent
        self._api: Any = None
        self._lock = asyncio.Lock()

    async def _client(self) -> Any:
        async with self._lock:
            if self._api is None:
                self._api = await api_client(self.source, user_agent=self._user_agent)
            return self._api

    async def aclose(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: Query = (),
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; the answer's JSON object, or a KubeAccessError (KubeStatusError for an error status)."""
        import aiohttp

        api_exception = _package("kubernetes.aio.client.exceptions").OpenApiException

        api = await self._client()
        try:
            method, url, headers, payload, _ = await api.param_serialize(
                method,
                path,
                query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=dict(body) if body is not None else None,
                auth_settings=["BearerToken"],
            )
            answer = await api.call_api(
                method,
                url,
                header_params=headers,
                body=payload,
                _request_timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
            response = answer.response  # aiohttp's, unread: read here with a bound
            try:
                # no declared size: aiohttp hands over the body decompressed, Content-Length counts it compressed
                raw = await aread_bounded(
                    response.content.iter_chunked(CHUNK_BYTES), what, limit=self._max_answer_bytes
                )
            finally:
                response.release()
        except BoundedReadError as exc:
            raise KubeAnswerError(str(exc)) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            host = getattr(api.configuration, "host", self.source.describe())
            detail = str(exc) or type(exc).__name__  # a timeout has no message of its own
            raise KubeTransportError(f"{what}: the API server at {host} is unreachable: {detail}") from exc
        except api_exception as exc:
            raise KubeAccessError(f"{what}: {exc}") from exc
        status = int(response.status)
        answer = _json(raw)
        if not 200 <= status < 300:
            message = answer.get("message") if isinstance(answer, dict) else None
            reason = str(message) if message else f"HTTP {status}: {raw[:200].decode(errors='replace')}"
            raise KubeStatusError(what, status, reason[:500])
        if not isinstance(answer, dict):
            raise KubeAnswerError(f"{what}: the answer is not a JSON object")
        return answer

    async def list_all(
        self, path: str, *, what: str, max_items: int, page_size: int = PAGE_SIZE, query: Query = ()
    ) -> KubeList:
        """Every object of a list, page by page (the API server cuts a list at `limit` and hands back a
        `continue` token). More than `max_items` objects: KubeListLimitError, never the first `max_items`.
        An expired continue token (410) is a KubeStatusError: the list is not resumed from a newer state."""
        if max_items < 0 or page_size < 1:
            raise ValueError("max_items must be >= 0 and page_size >= 1")
        items: list[dict[str, Any]] = []
        api_version = kind = ""
        token = ""
        pages = 0
        while True:
            room = max_items + 1 - len(items)  # one more than the limit: that one proves the list too long
            page_query = [*query, ("limit", str(min(page_size, room)))]
            if token:
                page_query.append(("continue", token))
            body = await self.request("GET", path, query=page_query, what=what)
            pages += 1
            found = body.get("items")
            if found is None:
                found = []
            if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
                raise KubeAnswerError(f"{what}: the answer is not a Kubernetes list")
            if pages == 1:
                api_version, kind = str(body.get("apiVersion") or ""), str(body.get("kind") or "")
            items.extend(found)
            if len(items) > max_items:
                raise KubeListLimitError(what, max_items)
            metadata = body.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else {}
            remaining = metadata.get("remainingItemCount")
            if isinstance(remaining, int) and not isinstance(remaining, bool) and len(items) + remaining > max_items:
                raise KubeListLimitError(what, max_items)
            following = str(metadata.get("continue") or "")
            if not following:
                return KubeList(api_version, kind, items, pages)
            if following == token or pages > max_items + 1:
                raise KubeAnswerError(f"{what}: the API server's continue tokens do not end")
            token = following

    async def apply(
        self,
        path: str,
        obj: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool,
        dry_run: bool = False,
        what: str,
    ) -> dict[str, Any]:
        """Server-side apply of `obj` at `path` as `field_manager`. `force` takes over fields another manager
        owns; without it such a field is a 409 (KubeStatusError). The caller decides when to force."""
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        return await self.request("PATCH", path, query=query, body=obj, content_type=APPLY_PATCH, what=what)


def _package(name: str) -> Any:
    """A module of the `kubernetes` package, imported on first use; typed Any, its generated code is untyped."""
    return importlib.import_module(name)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
