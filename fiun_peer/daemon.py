"""`fiun-peer run`: wire identity, store, libp2p gossip, the gRPC server and the agent together.

trio owns the agent and libp2p; grpcio's threaded server calls in through the bridge; torch work
runs in worker threads. On start the daemon writes ``HOME/run.json`` (its real addresses) once it is
ready, and removes it on a clean stop.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from pathlib import Path

import torch
import trio
from grpc_health.v1 import health, health_pb2

from .admin import AdminServicer
from .agent import Agent
from .bridge import TrioBridge
from .gossip import GossipNode
from .identity import Identity
from .rpc.fisher_service import FisherServicer, fetch_blob
from .rpc.record_service import RecordServicer, sync_records
from .rpc.server import make_server
from .store import Store, write_atomic

log = logging.getLogger("fiun_peer.daemon")


async def serve(home: Path, *, grpc_bind: str = "127.0.0.1:0", p2p_listen: str = "/ip4/127.0.0.1/tcp/0",
                bootstrap: list[str] | None = None, sync_interval: float = 5.0) -> None:
    torch.set_num_threads(1)  # the same thread count as the centralized reference: same bits
    identity = Identity.load(home)
    store = Store(home)
    bridge = TrioBridge()
    node: GossipNode | None = None

    async def publish(data: bytes) -> None:
        if node is not None and node.is_up:
            await node.publish(data)

    agent = Agent(identity, store, publish=publish, fetch_blob=fetch_blob)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    def status() -> dict:
        return {"name": identity.name, "peer_id": identity.peer_id, "public_key": identity.public_key_hex,
                "grpc_address": grpc_address, "p2p_addresses": node.listen_addrs if node else [],
                "connected_peers": len(node.connected_peers()) if node and node.is_up else 0,
                "records": store.record_count(), "models": agent.view.owned_by(identity.public_key_hex),
                "counters": store.counters()}

    def on_push(envelope: bytes) -> tuple[bool, str, str]:
        return bridge.call_sync(functools.partial(agent.ingest, envelope, source="push"))

    server, port = make_server(grpc_bind, AdminServicer(agent, bridge, status), FisherServicer(store),
                               RecordServicer(store, on_push), health_servicer=health_servicer)
    host = grpc_bind.rsplit(":", 1)[0]
    grpc_address = f"{host}:{port}"
    server.start()
    hello = json.dumps({"grpc": grpc_address, "public_key": identity.public_key_hex,
                        "name": identity.name}).encode()

    async def sync_with(target: str) -> None:
        try:
            envelopes = await trio.to_thread.run_sync(sync_records, target, store.record_ids())
        except Exception as exc:  # the peer may be gone; the next round retries
            log.debug("sync failed", extra={"event": "sync_failed", "target": target, "detail": str(exc)})
            return
        for env in envelopes:
            agent.ingest(env, source=f"sync:{target}")

    async def on_message(data: bytes, sender: str) -> None:
        agent.ingest(data, source="gossip")

    async def on_hello(blob: bytes, sender: str) -> None:
        addr = agent.learn_peer(blob)
        if addr:
            nursery.start_soon(sync_with, addr)  # catch up with a new or restarted peer at once

    async def anti_entropy() -> None:
        while True:
            await trio.sleep(sync_interval)
            for target in sorted(set(agent.peers.values())):
                await sync_with(target)

    node = GossipNode(identity.libp2p_keypair(), p2p_listen, on_message=on_message, on_hello=on_hello,
                      bootstrap=list(bootstrap or []), announce=hello)
    run_file = home / "run.json"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(agent.run)
            nursery.start_soon(anti_entropy)
            health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            write_atomic(run_file, json.dumps({"grpc": grpc_address, "p2p": node.listen_addrs,
                                               "peer_id": identity.peer_id, "pid": os.getpid(),
                                               "started_at": time.time()}).encode())
            log.info("peer up", extra={"event": "peer_up", "grpc": grpc_address,
                                       "p2p": ",".join(node.listen_addrs)})
            agent.kick()  # resume whatever a previous run left half done
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    log.info("stopping", extra={"event": "peer_stopping", "signal": signal.Signals(sig).name})
                    nursery.cancel_scope.cancel()
                    break
    finally:
        health_servicer.enter_graceful_shutdown()
        bridge.close()
        server.stop(grace=1).wait()
        run_file.unlink(missing_ok=True)
        store.close()


def run(home: Path, **kwargs) -> None:
    trio.run(functools.partial(serve, home, **kwargs))
