"""One mTLS client of the hub, for every caller: the device's enrollment, the node agent (entries, SVIDs,
renewal), trustctl's operator and publisher commands (httpx, sync and async), and the syncer (aiohttp).

Written once, because each copy had its own guarantees:
- the TLS context: the hub's roots, and the caller's X.509-SVID and key when it authenticates (mTLS);
- what an answer other than 2xx means (`failure_of`): 403 (and any other 4xx) a refusal; 400, 413, 414, 422,
  431 bad input; 409 a conflict; 429, 503 and any 5xx "unavailable, retry" with the hub's Retry-After, which
  decided nothing, exactly like no answer at all (connection, TLS, timeout): unreachable;
- a 200 that is not the protocol (not a JSON object, over the reader's bound, content-encoded) is a bad answer.

Everything raises `HubCallError` naming a `HubFailure`; each package turns it into its own error family at its
boundary (`HubCallError.convert`), and a command line into its exit code (`exit_code`: 3 unreachable, 2 local
configuration, 1 anything the hub refused).

aiohttp for the syncer: 0.13 against 0.9 ms of client CPU per request over TLS (measured with both on uvloop),
which decided how fast 10,000 simulated clusters converge on one machine. It is imported only by `session`
and `fetch`: a device's `trustctl enroll` does not load it.
"""

from __future__ import annotations

import enum
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from edgetrust._internal.bounded import CHUNK_BYTES, BoundedReadError, aread_bounded, declared_length
from edgetrust._internal.cli import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE

if TYPE_CHECKING:
    import aiohttp

#: a device on a slow link still answers within this; longer means the hub is gone
DEFAULT_TIMEOUT_S = 30.0
_BAD_INPUT = frozenset({400, 413, 414, 422, 431})
#: the most of a hub's reason that is repeated to a person (ours are a sentence; a longer one is cut, and said)
MAX_REASON_CHARS = 500
_E = TypeVar("_E", bound=Exception)


class HubFailure(enum.StrEnum):
    UNREACHABLE = "unreachable"  # no answer, or 429 / 5xx: nothing was decided; retry (after Retry-After)
    REFUSED = "refused"  # 401, 403, 404, any other 4xx: the hub decided no
    BAD_INPUT = "bad_input"  # the request itself is wrong: fix it and ask again
    CONFLICT = "conflict"  # the request contradicts the hub's state (a counter not newer, a duplicate)
    BAD_ANSWER = "bad_answer"  # an answer that is not the protocol, or over the bound the caller reads
    LOCAL = "local"  # the caller's own configuration: not https://, roots, SVID or key that cannot be loaded


class HubCallError(Exception):
    """A call to the hub that did not give a result; `failure` says which kind, the message says why."""

    def __init__(
        self,
        failure: HubFailure,
        message: str,
        *,
        status: int | None = None,
        error: str = "",
        reason: str = "",
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.status = status
        self.error = error
        self.reason = reason
        self.retry_after = retry_after

    @property
    def unreachable(self) -> bool:
        return self.failure is HubFailure.UNREACHABLE

    def exit_code(self) -> int:
        if self.failure is HubFailure.UNREACHABLE:
            return EXIT_UNREACHABLE
        return EXIT_USAGE if self.failure is HubFailure.LOCAL else EXIT_REFUSED

    def convert(self, *, unreachable: Callable[[str], _E], otherwise: Callable[[str], _E]) -> _E:
        """This failure in the caller's error family: `raise exc.convert(...) from exc`. An unreachable one
        keeps the hub's Retry-After (in seconds) where the caller's error has a `retry_after` for its retry loop."""
        if not self.unreachable:
            return otherwise(str(self))
        converted = unreachable(str(self))
        if hasattr(converted, "retry_after"):
            from edgetrust._internal.retry import retry_after_seconds

            converted.retry_after = retry_after_seconds(self.retry_after)
        return converted


def tls_context(ca_bundle: Path | str, cert: Path | str | None = None, key: Path | str | None = None) -> ssl.SSLContext:
    """Verify the hub against `ca_bundle`; present `cert` (an X.509-SVID chain, PEM) and `key` when given."""
    try:
        context = ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise HubCallError(HubFailure.LOCAL, f"the hub's roots {ca_bundle} cannot be loaded: {exc}") from exc
    if cert is not None:
        try:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise HubCallError(HubFailure.LOCAL, f"the SVID {cert} (key {key}) cannot be loaded: {exc}") from exc
    return context


def svid_context(svid_dir: Path) -> ssl.SSLContext:
    """mTLS with what `trustctl enroll` (and each renewal) wrote: bundle.pem, svid.pem, svid.key."""
    return tls_context(svid_dir / "bundle.pem", svid_dir / "svid.pem", svid_dir / "svid.key")


def check_url(base_url: str) -> str:
    if not base_url.startswith("https://"):
        scheme = base_url.split(":", 1)[0]
        raise HubCallError(HubFailure.LOCAL, f"refusing to speak to trustd over {scheme}: only https://")
    return base_url


def failure_of(status: int, headers: Mapping[str, str], body: bytes, action: str) -> HubCallError:
    """What the hub's answer `status` (not 2xx) means, with the reason and error code its JSON body names."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    found = payload if isinstance(payload, dict) else {}
    text = body[:MAX_REASON_CHARS].decode(errors="replace")
    reason = printable(str(found.get("reason") or text or status))
    error = printable(str(found.get("error") or ""), limit=64)
    retry = headers.get("retry-after") or headers.get("Retry-After")
    if status >= 500 or status == 429:
        after = f"; retry after {retry} s" if retry else "; retry later"
        return HubCallError(
            HubFailure.UNREACHABLE,
            f"trustd is unavailable for the {action} ({status}): {reason}{after}",
            status=status,
            error=error,
            reason=reason,
            retry_after=retry,
        )
    failure = (
        HubFailure.CONFLICT if status == 409 else HubFailure.BAD_INPUT if status in _BAD_INPUT else HubFailure.REFUSED
    )
    return HubCallError(
        failure, f"trustd refused the {action} ({status} {error}): {reason}", status=status, error=error, reason=reason
    )


def printable(text: str, *, limit: int = MAX_REASON_CHARS) -> str:
    """The hub's words as they may go into a log line or a terminal: one line, no control characters (an escape
    sequence, a newline forging a log line), at most `limit` characters (the cut said, never silent)."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else f"{cleaned[:limit]}... ({len(cleaned) - limit} more characters)"


def json_object(body: bytes, action: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise HubCallError(HubFailure.BAD_ANSWER, f"trustd answered the {action} with a body that is not JSON") from exc
    if not isinstance(payload, dict):
        raise HubCallError(HubFailure.BAD_ANSWER, f"trustd answered the {action} with JSON that is not an object")
    return payload


# httpx: the device, the node agent, trustctl


def client(base_url: str, context: ssl.SSLContext, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> httpx.Client:
    return httpx.Client(base_url=check_url(base_url), verify=context, timeout=timeout_s)


def async_client(base_url: str, context: ssl.SSLContext, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=check_url(base_url), verify=context, timeout=timeout_s)


def _unreachable(base_url: object, exc: Exception) -> HubCallError:
    return HubCallError(HubFailure.UNREACHABLE, f"cannot reach trustd at {base_url}: {str(exc) or type(exc).__name__}")


def request(http: httpx.Client, method: str, path: str, *, action: str, **kwargs: Any) -> httpx.Response:
    """One request; a 2xx answer is returned, anything else raised as its `HubCallError`."""
    try:
        answer = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise _unreachable(http.base_url, exc) from exc
    if not 200 <= answer.status_code < 300:
        raise failure_of(answer.status_code, answer.headers, answer.content, action)
    return answer


def call(http: httpx.Client, method: str, path: str, *, action: str, **kwargs: Any) -> dict[str, Any]:
    """One request whose answer is a JSON object."""
    return json_object(request(http, method, path, action=action, **kwargs).content, action)


async def acall(http: httpx.AsyncClient, method: str, path: str, *, action: str, **kwargs: Any) -> dict[str, Any]:
    try:
        answer = await http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise _unreachable(http.base_url, exc) from exc
    if not 200 <= answer.status_code < 300:
        raise failure_of(answer.status_code, answer.headers, answer.content, action)
    return json_object(answer.content, action)


# aiohttp: the syncer


def session(base_url: str, context: ssl.SSLContext, *, limit: int = 1) -> aiohttp.ClientSession:
    """A keep-alive mTLS session (`limit` connections; the syncer's one); bodies are read with a bound by
    `fetch`, so no transparent inflation that could grow past it."""
    import aiohttp

    return aiohttp.ClientSession(
        base_url=check_url(base_url),
        connector=aiohttp.TCPConnector(ssl=context, limit=limit, enable_cleanup_closed=True),
        auto_decompress=False,
        headers={"Accept-Encoding": "identity"},
    )


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, *, timeout_s: float, limit: int, **kwargs: Any
) -> Answer:
    """One request, any status; the body streamed with a bound (edgetrust/_internal/bounded.py), so a hostile
    or broken answer of any length costs at most `limit` bytes of memory and is refused (BAD_ANSWER)."""
    import aiohttp

    try:
        async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as answer:
            encoding = answer.headers.get("Content-Encoding", "identity")
            if encoding != "identity":
                raise HubCallError(HubFailure.BAD_ANSWER, f"{url}: the hub answered {encoding}-encoded")
            declared = declared_length(answer.headers.get("Content-Length"), url)
            if declared is not None and declared > limit:
                raise HubCallError(HubFailure.BAD_ANSWER, f"{url}: answer declares {declared} bytes, over {limit}")
            body = await aread_bounded(answer.content.iter_chunked(CHUNK_BYTES), url, limit=limit, declared=declared)
            return Answer(answer.status, answer.headers, body)
    except BoundedReadError as exc:
        raise HubCallError(HubFailure.BAD_ANSWER, str(exc)) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise HubCallError(HubFailure.UNREACHABLE, f"{url}: {str(exc) or type(exc).__name__}") from exc
