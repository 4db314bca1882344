"""Log rules of global policy: the datapath records matching flows in the `policy_events`
ring buffer; this thread writes each as one line of the agent's log (logger
`sluice.policy`), naming the rule that matched and what was decided."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from sluice.compile.failsafe import PROTOCOL_NAMES
from sluice.datapath import policy as dp
from sluice.loader.ringbuf import RingBuffer

log = logging.getLogger("sluice.policy")

POLL_MS = 200


def event_line(event: dp.PolicyEvent, origins: Mapping[int, str]) -> str:
    src, sport, dst, dport, proto = event.flow
    protocol = PROTOCOL_NAMES.get(proto, str(proto))
    verdict = "allowed" if event.verdict == dp.Action.ALLOW else "denied"
    origin = origins.get(event.rule_id, "a rule no longer in the policy")
    return (f"policy log: {protocol} {src}:{sport} -> {dst}:{dport} "
            f"{dp.Direction(event.direction).name.lower()} of endpoint {event.endpoint}, "
            f"{verdict}; rule {event.rule_id}: {origin}")


class PolicyLogReader:
    """Reads the ring buffer at MAP_FD on its own thread until stopped."""

    def __init__(self, map_fd: int, origins: Callable[[], Mapping[int, str]]) -> None:
        self._origins = origins
        self._ring = RingBuffer(map_fd, self._record)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _record(self, record: bytes) -> None:
        log.info("%s", event_line(dp.PolicyEvent.parse(record), self._origins()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._ring.poll(POLL_MS)
            except (OSError, ValueError) as err:
                log.warning("reading policy events: %s", err)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * POLL_MS / 1000 + 1)
        self._ring.close()
