"""Persistent address allocation from the node's pod CIDRs.

Layout under the network's state directory::

    ipam/lock                   flock'd by every invocation that changes plugin state
    ipam/<cidr, '/' as '_'>/<ip>   one file per allocated address: "<containerID> <ifname>\\n"

Allocation files are created with O_EXCL, so an address is never handed out twice even
without the lock, and they outlive any process: the plugin and the agent can restart freely.
The network address, the first host address (the node's own) and the IPv4 broadcast address
are never allocated; otherwise the lowest free address wins.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sluice import filelock
from sluice.cni.spec import Address, Attachment, CniError, Code, Network

LOCK_TIMEOUT = 20.0


def range_dirname(network: Network) -> str:
    return str(network).replace("/", "_")


def _range_from_dirname(name: str) -> Network | None:
    try:
        return ipaddress.ip_network(name.replace("_", "/"), strict=True)
    except ValueError:
        return None


def usable_bounds(network: Network) -> tuple[int, int]:
    """First and last allocatable address of NETWORK, as integers."""
    first = int(network.network_address) + 2
    last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
    return first, last


def _address(network: Network, value: int) -> Address:
    if network.version == 4:
        return ipaddress.IPv4Address(value)
    return ipaddress.IPv6Address(value)


def _owner(text: str) -> Attachment | None:
    parts = text.split()
    return Attachment(parts[0], parts[1]) if len(parts) == 2 else None


@dataclass(frozen=True)
class Allocation:
    network: Network
    address: Address
    owner: Attachment | None


class Ipam:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir) / "ipam"

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the state lock for the body; CNI error 11 if it stays busy past TIMEOUT."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with filelock.exclusive(self.root / "lock", timeout):
                yield
        except filelock.LockBusyError as busy:
            raise CniError(Code.TRY_AGAIN_LATER, str(busy)) from None

    def allocate(self, networks: Sequence[Network], owner: Attachment) -> Address:
        """The lowest free address of the first of NETWORKS that has one."""
        for network in networks:
            address = self._allocate_in(network, owner)
            if address is not None:
                return address
        listed = ", ".join(str(n) for n in networks)
        raise CniError(Code.IPAM_EXHAUSTED,
                       f"IPAM exhausted: no free address left in {listed}",
                       f"{len(networks)} range(s) full; release addresses or add a pod CIDR")

    def _allocate_in(self, network: Network, owner: Attachment) -> Address | None:
        directory = self.root / range_dirname(network)
        directory.mkdir(parents=True, exist_ok=True)
        taken = set(os.listdir(directory))
        first, last = usable_bounds(network)
        for value in range(first, last + 1):
            address = _address(network, value)
            if str(address) in taken:
                continue
            path = directory / str(address)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(f"{owner.container_id} {owner.ifname}\n")
                    out.flush()
                    os.fsync(out.fileno())
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            return address
        return None

    def allocations(self) -> list[Allocation]:
        found: list[Allocation] = []
        if not self.root.is_dir():
            return found
        for directory in sorted(self.root.iterdir()):
            network = _range_from_dirname(directory.name)
            if network is None or not directory.is_dir():
                continue
            for entry in sorted(directory.iterdir()):
                try:
                    address = ipaddress.ip_address(entry.name)
                except ValueError:
                    continue
                if address not in network:
                    continue
                try:
                    owner = _owner(entry.read_text())
                except FileNotFoundError:
                    continue
                found.append(Allocation(network, address, owner))
        return found

    def owned_by(self, owner: Attachment) -> list[Allocation]:
        return [a for a in self.allocations() if a.owner == owner]

    def release(self, owner: Attachment) -> list[Allocation]:
        """Free every address OWNER holds, in any range ever used; returns what was freed."""
        return self._remove(self.owned_by(owner))

    def release_unowned(self) -> list[Allocation]:
        """Free files whose owner is unreadable (a write interrupted by a crash)."""
        return self._remove([a for a in self.allocations() if a.owner is None])

    def _remove(self, allocations: Sequence[Allocation]) -> list[Allocation]:
        for allocation in allocations:
            (self.root / range_dirname(allocation.network) / str(allocation.address)).unlink(
                missing_ok=True)
        return list(allocations)

    def free_count(self, network: Network) -> int:
        first, last = usable_bounds(network)
        used = sum(1 for a in self.allocations()
                   if a.network == network and first <= int(a.address) <= last)
        return last - first + 1 - used
