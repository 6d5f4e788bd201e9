"""Prometheus metrics of one peer, read from its store and gossip node at scrape time.

Most numbers already live in the store (persistent counters, per-request state, model versions), so
a custom collector reads them when Prometheus scrapes instead of the agent updating metric objects
as it goes; only the apply latency is observed as it happens. Each peer has its own
``CollectorRegistry`` (not the process-global one) so that several peers in one process do not clash.

Served by ``fiun-peer run --metrics HOST:PORT`` (off by default) at ``http://HOST:PORT/metrics``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import state
from .binds import host_port
from .store import Store

log = logging.getLogger("fiun_peer.metrics")

#: Store counters with a metric of their own; every other counter is ``fiun_events_total{event=...}``.
_RECORDS, _REJECTED, _BYTES = "records_", "rejected_", "fisher_bytes_pulled"
#: Apply latency buckets (seconds): a last-layer update takes milliseconds to seconds.
APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class GossipView:
    """What the collector needs from the gossip node, fetched safely (the node lives on the trio
    thread; ``sample`` is expected to hop there, e.g. through the bridge)."""

    sample: Callable[[], tuple[int, int]]   # -> (connected peers, mesh peers on the records topic)


class PeerCollector(Collector):
    """Turns the store's counters and state into Prometheus metrics on every scrape."""

    def __init__(self, store: Store, name: str, gossip: GossipView | None = None,
                 known_peers: Callable[[], int] | None = None) -> None:
        self._store, self._name, self._gossip, self._known_peers = store, name, gossip, known_peers

    def collect(self) -> Iterator[Metric]:
        counters = self._store.counters()
        received = CounterMetricFamily("fiun_records_received", "Records verified and stored, by kind",
                                       labels=["kind"])
        rejected = CounterMetricFamily("fiun_records_rejected", "Records refused, by reason", labels=["reason"])
        events = CounterMetricFamily("fiun_events", "Other persistent event counters of the peer",
                                     labels=["event"])
        pulled = 0
        for name, value in counters.items():
            if name.startswith(_RECORDS):
                received.add_metric([name[len(_RECORDS):]], value)
            elif name.startswith(_REJECTED):
                rejected.add_metric([name[len(_REJECTED):]], value)
            elif name == _BYTES:
                pulled = value
            else:
                events.add_metric([name], value)
        yield received
        yield rejected
        yield events
        yield CounterMetricFamily("fiun_fisher_bytes_pulled", "Bytes of Fisher blobs pulled from other peers",
                                  value=pulled)
        yield GaugeMetricFamily("fiun_records_stored", "Signed records held in the store",
                                value=self._store.record_count())

        states = Counter(v.get("state", "pending") for v in state.requests(self._store).values())
        by_state = GaugeMetricFamily("fiun_requests", "(unlearning request, own model) pairs by state",
                                     labels=["state"])
        for name in ("pending", "applied"):
            by_state.add_metric([name], states.pop(name, 0))
        for name, n in sorted(states.items()):
            by_state.add_metric([name], n)
        yield by_state
        yield GaugeMetricFamily("fiun_requests_known", "Unlearning requests this peer has seen",
                                value=self._store.record_count("request"))

        versions = GaugeMetricFamily("fiun_model_version", "Current version of each model this peer owns",
                                     labels=["model"])
        for model_id, value in sorted(state.models(self._store).items()):
            versions.add_metric([model_id], value.get("version", 0))
        yield versions

        if self._gossip is not None:
            try:
                connected, mesh = self._gossip.sample()
            except Exception:  # the node is stopping; skip the gauges rather than fail the scrape
                pass
            else:
                yield GaugeMetricFamily("fiun_gossip_peers", "libp2p peers currently connected", value=connected)
                yield GaugeMetricFamily("fiun_gossip_mesh_peers", "GossipSub mesh peers on the records topic",
                                        value=mesh)
        if self._known_peers is not None:
            yield GaugeMetricFamily("fiun_known_peers", "Peers whose gRPC address this peer has learned",
                                    value=self._known_peers())
        info = GaugeMetricFamily("fiun_peer_info", "Constant 1, labelled with the peer's name", labels=["name"])
        info.add_metric([self._name], 1)
        yield info


class PeerMetrics:
    """The registry of one peer: the collector plus the apply-latency histograms."""

    def __init__(self, store: Store, name: str, **collector_kwargs: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PeerCollector(store, name, **collector_kwargs))
        self.apply_seconds = Histogram(
            "fiun_apply_seconds", "Time to apply one unlearning request to one own model (Eqs. 5-6 and the "
            "atomic write of the new version)", buckets=APPLY_BUCKETS, registry=self.registry)
        self.request_to_apply_seconds = Histogram(
            "fiun_request_to_apply_seconds", "From this peer first seeing a request to its own model applying it",
            buckets=APPLY_BUCKETS, registry=self.registry)
        self._server: Any = None
        self.address = ""

    def observe_apply(self, seconds: float, since_received: float) -> None:
        self.apply_seconds.observe(max(0.0, seconds))
        self.request_to_apply_seconds.observe(max(0.0, since_received))

    def serve(self, bind: str) -> str:
        """Serve ``/metrics`` on ``HOST:PORT`` (port 0 picks one); returns the bound address."""
        host, port = host_port(bind, "--metrics")
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {bind}: {exc}") from exc
        self.address = f"{host}:{self._server.server_port}"
        log.info("metrics served", extra={"event": "metrics_up", "address": self.address})
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
