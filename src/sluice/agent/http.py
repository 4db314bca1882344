"""The agent's HTTP endpoints: /healthz, /metrics, /state, /policy, /flows."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from sluice.agent import metrics
from sluice.agent.config import AgentConfig
from sluice.agent.flowlog import FlowLog
from sluice.agent.nfguard import MetricFamily
from sluice.agent.reconcile import RouteHits
from sluice.agent.stateview import state_document
from sluice.agent.status import AgentStatus
from sluice.observe.flows import FilterError, FlowFilter
from sluice.observe.policyview import endpoint_document, find_endpoint

log = logging.getLogger("sluice.agent.http")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    config: AgentConfig
    status: AgentStatus
    route_hits: Callable[[], list[RouteHits]]
    flow_log: FlowLog | None
    netfilter: Callable[[], list[MetricFamily]]
    stopping: threading.Event


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            health = self.server.status.health()
            self._send(200 if health.ok else 503, "text/plain; charset=utf-8",
                       ("ok" if health.ok else health.reason) + "\n")
        elif path == "/metrics":
            try:
                hits = self.server.route_hits()
            except OSError as err:
                log.warning("reading route hit counters: %s", err)
                hits = []
            view = self.server.status.view()
            body = metrics.render(self.server.config, view, hits,
                                  metrics.datapath_stats(self.server.config, view),
                                  self.server.netfilter())
            self._send(200, metrics.CONTENT_TYPE, body)
        elif path == "/state":
            doc = state_document(self.server.config, self.server.status.view())
            self._send(200, "application/json", json.dumps(doc, indent=2) + "\n")
        elif path == "/policy":
            self._policy(parse_qs(query).get("endpoint", [""])[0])
        elif path == "/flows":
            self._flows(parse_qs(query))
        else:
            self._send(404, "text/plain; charset=utf-8",
                       "not found: try /healthz, /metrics, /state, /policy or /flows\n")

    def _flows(self, query: dict[str, list[str]]) -> None:
        """/flows?last=N&follow=1&FILTER=VALUE...: the node's flows as JSON lines."""
        flow_log = self.server.flow_log
        if flow_log is None or self.server.config.dataplane.value != "bpf":
            self._send(404, "text/plain; charset=utf-8",
                       "flows come from the bpf datapath; this agent runs the "
                       f"{self.server.config.dataplane.value} dataplane\n")
            return
        try:
            flow_filter = FlowFilter.from_query(query)
            last = query.get("last", ["20"])[0]
            if not last.isdigit():
                raise FilterError(f"last {last!r}: expected a number of flows")
        except FilterError as err:
            self._send(400, "text/plain; charset=utf-8", f"{err}\n")
            return
        follow = query.get("follow", ["0"])[0] in ("1", "true", "yes")
        lines = [json.dumps(f.to_json()) + "\n" for f in flow_log.last(int(last), flow_filter)]
        if not follow:
            self._send(200, "application/x-ndjson", "".join(lines))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write("".join(lines).encode())
            self.wfile.flush()
            for flow in flow_log.follow(flow_filter, self.server.stopping):
                if flow is None:
                    if self._peer_left():
                        return
                    continue
                self.wfile.write((json.dumps(flow.to_json()) + "\n").encode())
                self.wfile.flush()
        except OSError:
            return

    def _peer_left(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except OSError:
            return True

    def _policy(self, name: str) -> None:
        """/policy: the endpoints policy knows; /policy?endpoint=NS/POD: one of them."""
        outcome = self.server.status.view().outcome
        if outcome is None:
            self._send(503, "text/plain; charset=utf-8", "no reconcile has completed yet\n")
            return
        policy = outcome.desired.policy
        if not name:
            doc: Any = {"endpoints": [e.name for e in policy.endpoints]}
        else:
            endpoint = find_endpoint(policy, name)
            if endpoint is None:
                self._send(404, "text/plain; charset=utf-8",
                           f"no endpoint {name} on node {self.server.config.node}\n")
                return
            doc = endpoint_document(policy, endpoint)
        self._send(200, "application/json", json.dumps(doc, indent=2) + "\n")

    def _send(self, code: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class AgentHttpServer:
    def __init__(self, config: AgentConfig, status: AgentStatus,
                 route_hits: Callable[[], list[RouteHits]], *,
                 flow_log: FlowLog | None = None,
                 netfilter: Callable[[], list[MetricFamily]] = list) -> None:
        host, port = config.listen
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.config = config
        self._server.status = status
        self._server.route_hits = route_hits
        self._server.flow_log = flow_log
        self._server.netfilter = netfilter
        self._server.stopping = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2}, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
