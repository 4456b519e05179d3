"""A workload's own X.509-SVID from the SPIFFE Workload API (the node agent's socket), followed as it rotates.

Cluster workloads (the syncer now, the webhook later) speak mTLS to the hub with an identity the node agent
issues and renews; none of them holds a key in a Secret. `WorkloadSvid` keeps one `ssl.SSLContext` and loads
each SVID the agent streams into it, so every new TLS handshake presents the current one: the agent pushes the
renewed SVID at half its lifetime, while the previous one is still valid, so across rotations the context is
never without a valid SVID (the `svid_rotation` gap is 0). Connections already open keep the SVID they
shook hands with; the hub checks a client certificate once, at the handshake.

The key never touches a file system: OpenSSL loads a chain only from a path, so the PEM goes through an
anonymous in-memory file (memfd, Linux) that is closed as soon as it is loaded.

Fails closed: no SVID from the agent within the start timeout is `WorkloadSvidError`, and an update whose
SVID does not load leaves the previous one in force (and is logged), never an empty context.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:  # py-spiffe (and gRPC under it) is imported only by a process that opens the Workload API
    from spiffe import X509Svid

from trustd.errors import TrustdError

log = logging.getLogger("edgetrust.spiffe.workload")

#: the variable py-spiffe and SPIRE's tools read for the Workload API's address (unix:///path/to/api.sock)
SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"
START_TIMEOUT_S = 30.0


class WorkloadSvidError(TrustdError):
    code = "workload_svid_unavailable"


def socket_address(value: str | None) -> str:
    """`value` (a path or a unix:// URL), else SPIFFE_ENDPOINT_SOCKET, as the unix:// URL py-spiffe wants."""
    text = value or os.environ.get(SOCKET_ENV, "")
    if not text:
        raise WorkloadSvidError(
            f"no Workload API socket: give its path (e.g. /run/spiffe/api.sock) or set {SOCKET_ENV}"
        )
    return text if text.startswith("unix:") else f"unix://{Path(text).absolute()}"


class WorkloadSvid:
    """An SSL client context that always presents this workload's current X.509-SVID from the Workload API.

    `ca_bundle` verifies the hub's server certificate (trustd's serving chain, not the SPIFFE bundle). Use as a
    context manager, or call `close()`: it stops the Workload API stream."""

    def __init__(self, socket: str, ca_bundle: Path, *, start_timeout_s: float = START_TIMEOUT_S) -> None:
        # here, not at module level: a process on the Secret fallback never pays gRPC's memory (~5 MiB)
        from spiffe import X509Source
        from spiffe.errors import PySpiffeError

        try:
            self.context = ssl.create_default_context(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise WorkloadSvidError(f"the hub's CA bundle {ca_bundle} cannot be loaded: {exc}") from exc
        self._lock = threading.Lock()
        self._listeners: list[Callable[[X509Svid], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.svid: X509Svid | None = None
        self.rotations = 0
        try:
            self._source = X509Source(socket_path=socket, timeout_in_seconds=start_timeout_s)
        except PySpiffeError as exc:
            raise WorkloadSvidError(
                f"no X.509-SVID from the Workload API at {socket} within {start_timeout_s:.0f} s: {exc} "
                "(is the node agent running, and is there a registration entry for this pod's namespace and "
                "service account? `trustctl fleet cluster add`)"
            ) from exc
        try:
            self._load(self._source.get_x509_context().default_svid)
        except (PySpiffeError, WorkloadSvidError):
            self._source.close()
            raise
        self._source.subscribe_for_updates(self._updated)

    @property
    def spiffe_id(self) -> str:
        return str(self.svid.spiffe_id) if self.svid is not None else ""

    def on_rotation(self, listener: Callable[[X509Svid], None]) -> None:
        """Call `listener` (from the Workload API's thread) with each SVID loaded after the first."""
        self._listeners.append(listener)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load rotated SVIDs on `loop`, the thread that makes the handshakes: OpenSSL does not promise that
        replacing a context's certificate while another thread starts a connection with it is safe."""
        self._loop = loop

    def _updated(self) -> None:
        """The Workload API's thread: a new context (SVIDs, bundles) was streamed."""
        from spiffe.errors import PySpiffeError

        try:
            svid = self._source.get_x509_context().default_svid
        except PySpiffeError as exc:
            log.error("kept the previous X.509-SVID (%s): the update cannot be read: %s", self.spiffe_id, exc)
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._rotate, svid)
        else:
            self._rotate(svid)

    def _rotate(self, svid: X509Svid) -> None:
        if self.svid is not None and svid.leaf.serial_number == self.svid.leaf.serial_number:
            return  # a bundle update, not a new SVID
        try:
            self._load(svid)
        except WorkloadSvidError as exc:
            log.error("kept the previous X.509-SVID (%s): %s", self.spiffe_id, exc)
            return
        self.rotations += 1
        log.info(
            "X.509-SVID rotated: %s, valid from %s until %s",
            svid.spiffe_id,
            svid.leaf.not_valid_before_utc.isoformat(),
            svid.leaf.not_valid_after_utc.isoformat(),
        )
        for listener in self._listeners:
            listener(svid)

    def _load(self, svid: X509Svid) -> None:
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
        key = svid.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.memfd_create("svid", os.MFD_CLOEXEC)
        try:
            os.write(fd, chain + key)
            with self._lock:  # one load at a time; a handshake copies the certificate it uses
                self.context.load_cert_chain(f"/proc/self/fd/{fd}")
                self.svid = svid
        except (OSError, ssl.SSLError) as exc:
            raise WorkloadSvidError(
                f"the X.509-SVID {svid.spiffe_id} from the Workload API does not load: {exc}"
            ) from exc
        finally:
            os.close(fd)

    def check_open(self) -> None:
        """Raise WorkloadSvidError when the Workload API stream has ended for good (py-spiffe retries everything
        but CANCELLED and INVALID_ARGUMENT): no rotation would come, so the caller must stop (and be restarted)
        rather than run on until its SVID expires."""
        if self._source.is_closed():
            raise WorkloadSvidError(
                f"the Workload API stream ended for good; the X.509-SVID held ({self.spiffe_id}) will not be renewed"
            )

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> WorkloadSvid:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
