"""A registry run by the attacker: real HTTPS on loopback (a certificate from the test CA, as a registry the
cluster trusts would have), answering the distribution API with what a hostile or broken registry can send.

It stands for the remote party, not for any of our components: the webhook under test talks to it over the
network like to any registry. Each repository name picks one misbehaviour:

* `loop/*`: every request is redirected to itself (a redirect loop);
* `bad-encoding/*`: 200 with `Content-Encoding: gzip` and a body that is not gzip;
* `huge-token/*`: a bearer challenge whose token service answers 8 MiB;
* `bad-token/*`: a bearer challenge whose token service answers a token with a line break (header injection).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from localpeers.tlsca import TestCA
from tests.support.https_stub import QuietHandler, serving_https

HUGE_TOKEN_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class HostileRegistry:
    host: str


class _Handler(QuietHandler):
    server_version = "hostile-registry"

    def do_GET(self) -> None:  # noqa: N802 - http.server names it
        path = self.path.split("?", 1)[0]
        host = self.headers.get("Host", "")
        if path == "/v2/":
            self.send(200, b"{}")
        elif path.startswith("/token/"):
            if path.startswith("/token/huge"):
                self.send(200, b'{"token": "' + b"A" * HUGE_TOKEN_BYTES + b'"}')
            else:
                self.send(200, json.dumps({"token": "abc\r\nX-Injected: yes"}).encode())
        elif path.startswith("/v2/loop/"):
            self.send(302, b"", {"Location": self.path})
        elif path.startswith("/v2/bad-encoding/"):
            self.send(200, b"this is not gzip at all", {"Content-Encoding": "gzip"})
        elif path.startswith(("/v2/huge-token/", "/v2/bad-token/")) and "Authorization" not in self.headers:
            which = "huge" if path.startswith("/v2/huge-token/") else "bad"
            challenge = f'Bearer realm="https://{host}/token/{which}",service="hostile"'
            self.send(401, b"{}", {"WWW-Authenticate": challenge})
        else:
            self.send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')


@contextmanager
def running_hostile_registry(ca: TestCA) -> Iterator[HostileRegistry]:
    with serving_https(_Handler, ca.issue("hostile-registry")) as port:
        yield HostileRegistry(host=f"127.0.0.1:{port}")
