"""Log rules of global policy: the datapath records matching flows in the `policy_events`
ring buffer; this thread writes each as one line of the agent's log (logger
`sluice.policy`), naming the rule that matched and what was decided."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from sluice.compile.failsafe import PROTOCOL_NAMES
from sluice.datapath import policy as dp
from sluice.loader.ringbuf import RingBufferReader

log = logging.getLogger("sluice.policy")


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

    def __init__(self, map_fd: int, origins: Callable[[], Mapping[int, str]],
                 on_event: Callable[[dp.PolicyEvent], None] | None = None) -> None:
        self._origins = origins
        self._on_event = on_event
        self._reader = RingBufferReader(map_fd, self._record, name="policy-log")

    def start(self) -> None:
        self._reader.start()

    def _record(self, record: bytes) -> None:
        event = dp.PolicyEvent.parse(record)
        log.info("%s", event_line(event, self._origins()))
        if self._on_event is not None:
            self._on_event(event)

    def stop(self) -> None:
        self._reader.stop()
