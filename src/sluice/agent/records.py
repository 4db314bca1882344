"""Which CNI endpoint records describe pods that are still wired on this node."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sluice.cni.registry import EndpointRecord


def live_records(records: Iterable[EndpointRecord],
                 ifindexes: Mapping[str, int]) -> tuple[list[EndpointRecord], list[str]]:
    """Records whose host veth exists with the recorded ifindex, and a problem for each
    other one (a stale record: the pod's veth is gone, or was replaced without a new record).
    """
    live: list[EndpointRecord] = []
    problems: list[str] = []
    for record in records:
        index = ifindexes.get(record.host_ifname)
        if index is None:
            problems.append(f"endpoint {record.key}: its host interface {record.host_ifname} "
                            "is gone; ignored")
        elif index != record.host_ifindex:
            problems.append(f"endpoint {record.key}: {record.host_ifname} has ifindex {index}, "
                            f"the record says {record.host_ifindex}; ignored")
        else:
            live.append(record)
    return live, problems
