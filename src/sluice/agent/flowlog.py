"""The node's recent flows: the agent reads the datapath's `flow_events` ring buffer on its
own thread, names each event (observe.flows) and keeps the last ones for `/flows`, where
`sluice flows` reads them or follows new ones."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from sluice.datapath.events import FlowEvent
from sluice.loader.ringbuf import RingBufferReader
from sluice.observe.flows import Flow, FlowFilter, Names, decode

log = logging.getLogger("sluice.flows")

POLL_MS = 100
DEFAULT_CAPACITY = 8192


def monotonic_to_unix_ns() -> int:
    """What to add to a CLOCK_MONOTONIC time (bpf_ktime_get_ns) to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


class _Entry:
    """A flow as it came: decoded (and named) only when somebody asks for it, so reading
    the ring buffer costs the agent as little as possible."""

    __slots__ = ("_flow", "_names", "_offset", "_record")

    def __init__(self, record: bytes | Flow, names: Names | None, offset: int) -> None:
        self._record = record
        self._names = names
        self._offset = offset
        self._flow: Flow | None = record if isinstance(record, Flow) else None

    def flow(self) -> Flow | None:
        if self._flow is None and isinstance(self._record, bytes) and self._names is not None:
            try:
                self._flow = decode(FlowEvent.parse(self._record), self._names, self._offset)
            except ValueError as err:
                log.warning("%s", err)
                self._record = b""
        return self._flow


class FlowLog:
    """The last CAPACITY flows, numbered; followers wait for numbers they have not seen."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._flows: deque[tuple[int, _Entry]] = deque(maxlen=capacity)
        self._next = 0
        self._changed = threading.Condition()

    def add(self, flow: Flow) -> None:
        self._append(_Entry(flow, None, 0))

    def add_event(self, record: bytes, names: Names, offset: int) -> None:
        """A raw flow_events record, named with NAMES when decoded (OFFSET: its clock)."""
        self._append(_Entry(record, names, offset))

    def _append(self, entry: _Entry) -> None:
        with self._changed:
            self._flows.append((self._next, entry))
            self._next += 1
            self._changed.notify_all()

    @property
    def received(self) -> int:
        return self._next

    def last(self, count: int, flow_filter: FlowFilter) -> list[Flow]:
        with self._changed:
            entries = [e for _, e in self._flows]
        flows = [f for f in (e.flow() for e in entries) if f is not None]
        matching = [f for f in flows if flow_filter.matches(f)]
        return matching[-count:] if count else []

    def follow(self, flow_filter: FlowFilter, stop: threading.Event,
               wait: float = 1.0) -> Iterator[Flow | None]:
        """New matching flows as they come; None after each WAIT without any (so a caller
        can check its connection), until STOP is set."""
        seen = self._next
        while not stop.is_set():
            with self._changed:
                if self._next == seen:
                    self._changed.wait(wait)
                fresh = [(n, f) for n, f in self._flows if n >= seen]
                seen = self._next
            flows = [f for f in (e.flow() for _, e in fresh) if f is not None]
            matching = [f for f in flows if flow_filter.matches(f)]
            if not matching:
                yield None
            yield from matching


class FlowReader:
    """Reads the ring buffer at MAP_FD into LOG, naming events with NAMES() at read time."""

    def __init__(self, map_fd: int, flow_log: FlowLog, names: Callable[[], Names]) -> None:
        self._log = flow_log
        self._names = names
        self._reader = RingBufferReader(map_fd, self._record, name="flow-events",
                                        poll_ms=POLL_MS)

    def start(self) -> None:
        self._reader.start()

    def _record(self, record: bytes) -> None:
        # The wall clock may be stepped, the monotonic one not: the offset is taken now.
        self._log.add_event(record, self._names(), monotonic_to_unix_ns())

    def stop(self) -> None:
        self._reader.stop()
