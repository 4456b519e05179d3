"""The SPIFFE Workload API (gRPC), as SPIRE's agent serves it, so workloads written for SPIRE run unchanged.

Every call must carry the `workload.spiffe.io: true` metadata (the spec's guard against a browser or SSRF
reaching the socket); the caller is identified by the kernel (peercred.py) and gets the SVIDs of the entries
whose selectors all match it. Streams send the current state, then every change (rotation, new entries, new
bundle), until the workload hangs up.

The message classes are py-spiffe's generated ones (`spiffe._proto`, pinned with py-spiffe): the same wire
format the client speaks, compiled once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2
from spiffe._proto import workload_pb2, workload_pb2_grpc

from edgetrust.spiffe.jwt_svid import JwtSvidError, validate_jwt_svid
from trustd.agent.identities import AgentError, Entry, Identities, Issued, Snapshot
from trustd.agent.k8s import KubeAttestor
from trustd.agent.peercred import AgentSocketError, Caller, PeerCredFront
from trustd.errors import TrustdError

log = logging.getLogger("edgetrust.agent")
HEADER = "workload.spiffe.io"


class WorkloadAPI(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, identities: Identities, front: PeerCredFront, kube: KubeAttestor | None = None) -> None:
        self._identities = identities
        self._front = front
        self._kube = kube

    # -- who is asking -------------------------------------------------------------------------------------
    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> frozenset[str]:
        """The caller's selectors: unix (uid, gid, pid), and k8s when the agent runs on a Kubernetes node."""
        caller = await self._peer(context)
        selectors = caller.selectors
        if self._kube is not None:
            try:
                selectors |= await self._kube.selectors(caller.pid, caller.cgroup)
            except TrustdError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot attest the workload: {exc.diagnostics()}")
        return selectors

    async def _peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get(HEADER) != "true":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        # the relay's own connection, by its full name (peercred.py): nothing else can have that peer string
        caller = self._front.callers.get(context.peer() or "")
        if caller is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "connect through the Workload API socket")
        assert caller is not None
        return caller

    @staticmethod
    def _matching(snapshot: Snapshot, selectors: frozenset[str]) -> list[Issued]:
        return [s for s in snapshot.issued.values() if s.entry.selectors <= selectors]

    # -- X.509 ---------------------------------------------------------------------------------------------
    async def FetchX509SVID(  # noqa: N802 - the protocol's name
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        caller = await self._caller(context)
        snapshot = self._identities.snapshot
        while True:
            found = self._matching(snapshot, caller)
            if not found:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
            bundle = b"".join(snapshot.authorities_der)
            yield workload_pb2.X509SVIDResponse(
                svids=[
                    workload_pb2.X509SVID(
                        spiffe_id=s.entry.spiffe_id,
                        x509_svid=b"".join(s.chain_der),
                        x509_svid_key=s.key_der,
                        bundle=bundle,
                    )
                    for s in found
                ],
                federated_bundles={td: b"".join(b[0]) for td, b in snapshot.federated.items()},
            )
            snapshot = await self._identities.wait_for_change(snapshot.version)

    async def FetchX509Bundles(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await self._caller(context)
        snapshot = self._identities.snapshot
        while True:
            bundles = {td: b"".join(b[0]) for td, b in snapshot.federated.items()}
            bundles[snapshot.trust_domain] = b"".join(snapshot.authorities_der)
            yield workload_pb2.X509BundlesResponse(bundles=bundles)
            snapshot = await self._identities.wait_for_change(snapshot.version)

    # -- JWT -----------------------------------------------------------------------------------------------
    async def FetchJWTSVID(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802
        caller = await self._caller(context)
        if not request.audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        entries: list[Entry] = [s.entry for s in self._matching(self._identities.snapshot, caller)]
        if request.spiffe_id:
            entries = [e for e in entries if e.spiffe_id == request.spiffe_id]
        if not entries:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        try:
            tokens = [(e, await self._identities.jwt_svid(e, list(request.audience))) for e in entries]
        except TrustdError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot obtain a JWT-SVID: {exc.diagnostics()}")
        return workload_pb2.JWTSVIDResponse(
            svids=[workload_pb2.JWTSVID(spiffe_id=e.spiffe_id, svid=token) for e, token in tokens]
        )

    async def FetchJWTBundles(  # noqa: N802
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await self._caller(context)
        snapshot = self._identities.snapshot
        while True:
            bundles = {td: json.dumps({"keys": list(b[1])}).encode() for td, b in snapshot.federated.items()}
            bundles[snapshot.trust_domain] = json.dumps({"keys": list(snapshot.jwt_keys)}).encode()
            yield workload_pb2.JWTBundlesResponse(bundles=bundles)
            snapshot = await self._identities.wait_for_change(snapshot.version)

    async def ValidateJWTSVID(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802
        await self._caller(context)
        if not request.audience or not request.svid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience and svid must be specified")
        try:
            claims = _validate(request.svid, request.audience, self._identities.snapshot)
        except AgentError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.diagnostics())
        body = struct_pb2.Struct()
        body.update({k: v for k, v in claims.items() if isinstance(v, str | int | float | bool | list)})
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(claims["sub"]), claims=body)


def _validate(token: str, audience: str, snapshot: Snapshot) -> dict[str, Any]:
    keys = {str(k["kid"]): k for k in snapshot.jwt_keys if "kid" in k}
    try:
        claims = validate_jwt_svid(token, keys, audience=audience)
    except JwtSvidError as exc:
        raise AgentError(str(exc)) from exc
    if not str(claims["sub"]).startswith(f"spiffe://{snapshot.trust_domain}/"):
        raise AgentError(f"JWT-SVID subject {claims['sub']} is not in trust domain {snapshot.trust_domain}")
    return claims


async def serve(identities: Identities, front: PeerCredFront, kube: KubeAttestor | None = None) -> grpc.aio.Server:
    """The gRPC server on the front's private unix socket (no TCP port: nothing but the relay reaches it)."""
    server = grpc.aio.server()
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(WorkloadAPI(identities, front, kube), server)  # type: ignore[no-untyped-call]
    try:
        server.add_insecure_port(front.backend_address)
    except RuntimeError as exc:
        raise AgentSocketError(f"cannot serve gRPC on {front.backend}: {exc}") from exc
    await server.start()
    return server
