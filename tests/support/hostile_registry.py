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
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.tlsca import TestCA

HUGE_TOKEN_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class HostileRegistry:
    host: str


class _Handler(BaseHTTPRequestHandler):
    server_version = "hostile-registry"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        host = self.headers.get("Host", "")
        if path == "/v2/":
            self._send(200, b"{}")
        elif path.startswith("/token/"):
            if path.startswith("/token/huge"):
                self._send(200, b'{"token": "' + b"A" * HUGE_TOKEN_BYTES + b'"}')
            else:
                self._send(200, json.dumps({"token": "abc\r\nX-Injected: yes"}).encode())
        elif path.startswith("/v2/loop/"):
            self._send(302, b"", {"Location": self.path})
        elif path.startswith("/v2/bad-encoding/"):
            self._send(200, b"this is not gzip at all", {"Content-Encoding": "gzip"})
        elif path.startswith(("/v2/huge-token/", "/v2/bad-token/")) and "Authorization" not in self.headers:
            which = "huge" if path.startswith("/v2/huge-token/") else "bad"
            challenge = f'Bearer realm="https://{host}/token/{which}",service="hostile"'
            self._send(401, b"{}", {"WWW-Authenticate": challenge})
        else:
            self._send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def running_hostile_registry(ca: TestCA) -> Iterator[HostileRegistry]:
    cert = ca.issue("hostile-registry")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert.cert), str(cert.key))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HostileRegistry(host=f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
