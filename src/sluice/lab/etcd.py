"""The lab's etcd (`lab up --datastore etcd`): one member in the underlay namespace.

It listens on 198.18.0.2:2379 and [fd00:ff::2]:2379 (the families of the lab), addresses
of the underlay bridge br0, so every node namespace reaches it over the underlay as it
would reach a real cluster's etcd; peers talk on 127.0.0.1:2380 only. Its data directory
and log are under the lab's state directory, it runs in the cgroup sluice-lab-<lab>/etcd,
and it is recorded in state.json (PID and start time) so that `lab down`, and the cleanup
of a failed or interrupted `up`, stop it by PID.
"""

from __future__ import annotations

import contextlib
import time

from sluice import cgroups, netlink, netns
from sluice.datastore import DatastoreError
from sluice.datastore.etcdstore import EtcdDatastore
from sluice.lab import names, procs
from sluice.lab.errors import LabError
from sluice.lab.plan import ETCD_CLIENT_PORT, etcd_addresses, underlay_prefix
from sluice.lab.state import LabState, ProcessRecord
from sluice.lab.topology import BRIDGE

ETCD = "/usr/bin/etcd"
PEER_URL = "http://127.0.0.1:2380"
READY_TIMEOUT = 30.0
POLL = 0.1
MAX_TXN_OPS = 100_000
"""A lab applies whole manifests in one transaction; etcd's default allows 128 writes."""
MAX_REQUEST_BYTES = 32 << 20


def _url(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{ETCD_CLIENT_PORT}"


def etcd_argv(state: LabState) -> list[str]:
    paths, underlay = state.paths, names.underlay_netns(state.name)
    client_urls = ",".join(_url(address) for address in etcd_addresses(state.options))
    return [
        "nsenter", f"--net={netns.netns_path(underlay)}", "--", ETCD,
        "--name", state.name,
        "--data-dir", str(paths.etcd_data),
        "--listen-client-urls", client_urls,
        "--advertise-client-urls", client_urls,
        "--listen-peer-urls", PEER_URL,
        "--initial-advertise-peer-urls", PEER_URL,
        "--initial-cluster", f"{state.name}={PEER_URL}",
        "--max-txn-ops", str(MAX_TXN_OPS),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
    ]


def start_etcd(state: LabState) -> ProcessRecord:
    """Give the underlay bridge etcd's addresses and start etcd (not waiting for it)."""
    underlay = names.underlay_netns(state.name)
    addresses = etcd_addresses(state.options)
    netlink.configure(underlay, BRIDGE, [
        f"{address}/{underlay_prefix(6 if ':' in address else 4)}" for address in addresses])
    cgroup_path = cgroups.create(names.outside_cgroup(state.name, "etcd"))
    return procs.spawn(etcd_argv(state), role="etcd", log=state.paths.etcd_log,
                       cgroup_path=cgroup_path)


def wait_ready(state: LabState, record: ProcessRecord, timeout: float = READY_TIMEOUT
               ) -> float:
    """Wait until etcd answers a read; the seconds it took. LabError, with the end of its
    log, when it exits first or does not answer within TIMEOUT."""
    began = time.monotonic()
    datastore = EtcdDatastore(state.paths.datastore_url)
    with contextlib.closing(datastore):
        while True:
            if procs.exited(record):
                raise LabError(f"etcd exited before it was ready; the end of {record.log}:\n"
                               f"{procs.log_tail(record.log)}")
            try:
                datastore.current_revision()
                return time.monotonic() - began
            except DatastoreError as err:
                if time.monotonic() - began > timeout:
                    raise LabError(f"etcd did not answer within {timeout:.0f}s ({err}); the "
                                   f"end of {record.log}:\n{procs.log_tail(record.log)}"
                                   ) from None
            time.sleep(POLL)
