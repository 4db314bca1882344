"""Start the agent's threads, wait for SIGTERM or SIGINT, stop cleanly.

The caller has already moved the process into the node's namespace. Signals are blocked
in every thread and taken synchronously by the main thread (sigtimedwait), so no handler
ever interrupts a thread holding a lock.
"""

from __future__ import annotations

import logging
import signal
import threading

from sluice.agent.config import AgentConfig
from sluice.agent.http import AgentHttpServer
from sluice.agent.loop import ReconcileLoop
from sluice.agent.nfguard import NetfilterGuard
from sluice.agent.reconcile import Reconciler
from sluice.agent.status import AgentStatus
from sluice.agent.triggers import DatastoreWatcher, EndpointSocket, Trigger
from sluice.apply.sysctl import ensure_forwarding
from sluice.datastore import open_datastore

log = logging.getLogger("sluice.agent")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
SHUTDOWN_TIMEOUT = 30.0


class StartupError(Exception):
    """The agent cannot start; the message says why."""


def run_agent(config: AgentConfig) -> int:
    try:
        datastore = open_datastore(config.datastore_url)
    except Exception as err:
        raise StartupError(f"opening datastore {config.datastore_url}: {err}") from err
    for name in ensure_forwarding():
        log.info("set %s = 1", name)
    status = AgentStatus()
    reconciler = Reconciler(config, datastore)
    trigger, stop = Trigger(), threading.Event()
    endpoint_socket = EndpointSocket(config.cni_state_dir, trigger, stop)
    try:
        endpoint_socket.open()
        guard = NetfilterGuard.install(config)  # before the loop runs any netfilter tool
        http = AgentHttpServer(config, status, reconciler.route_hits,
                               flow_log=reconciler.flow_log, netfilter=guard.metric_families)
    except (OSError, RuntimeError) as err:
        endpoint_socket.close()
        datastore.close()
        raise StartupError(str(err)) from err
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    watcher = DatastoreWatcher(datastore, trigger, stop)
    loop = ReconcileLoop(reconciler, status, trigger, stop, config.resync_interval)
    for part in (guard, loop, watcher, endpoint_socket, http):
        part.start()
    log.info("agent for node %s running: %s dataplane, %s routing, http on %s:%d, CNI socket "
             "%s", config.node, config.dataplane.value, config.routing.value, *config.listen,
             endpoint_socket.path)
    try:
        while loop.is_alive():
            received = signal.sigtimedwait(STOP_SIGNALS, 1.0)
            # A wait interrupted by another signal may report signal 0: not a stop.
            if received is not None and received.si_signo in STOP_SIGNALS:
                log.info("%s: stopping; pinned maps and links stay, the datapath keeps "
                         "forwarding", signal.Signals(received.si_signo).name)
                break
    finally:
        stop.set()
        trigger.fire("stop")
        http.stop()
        loop.join(SHUTDOWN_TIMEOUT)
        watcher.join(5.0)
        guard.stop()
        endpoint_socket.close()
        datastore.close()
        reconciler.close()
    return 0
