"""Demo of the first datapath slice: two namespaces, a veth, the prefilter on tcx ingress.

Traffic flows; a CIDR written into the BPF map from Python drops it; deleting the entry
lets it flow again. Everything it creates is removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import os
import socket

from sluice import netlink, netns
from sluice.datapath.prefilter import MAP_NAME, PrefilterAction, PrefilterEntry, PrefilterKey
from sluice.loader import BpfObject, Direction, attach_tcx

CLIENT, SERVER = f"sluice-demo-client-{os.getpid()}", f"sluice-demo-server-{os.getpid()}"
CLIENT_IP, SERVER_IP = "198.18.0.1", "198.18.0.2"


def send(port: int = 9000) -> bool:
    with netns.entered(SERVER):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.entered(CLIENT):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((SERVER_IP, port))
        rx.settimeout(1.0)
        tx.sendto(b"hello", (SERVER_IP, port))
        try:
            return rx.recv(64) == b"hello"
        except TimeoutError:
            return False


def show(step: str) -> None:
    print(f"  {step:<44} {'delivered' if send() else 'DROPPED'}")


def main() -> None:
    try:
        netns.create(CLIENT)
        netns.create(SERVER)
        netlink.create_veth(CLIENT, "demo0", SERVER, "demo1")
        netlink.configure(CLIENT, "demo0", [f"{CLIENT_IP}/24"])
        netlink.configure(SERVER, "demo1", [f"{SERVER_IP}/24"])
        with BpfObject.open("prefilter") as obj:
            obj.load()
            cidrs = obj.map(MAP_NAME, PrefilterKey, PrefilterEntry)
            ifindex = netlink.ifindex(SERVER, "demo1")
            with netns.entered(SERVER):
                link = attach_tcx(obj.program("prefilter_tc"), ifindex, Direction.INGRESS)
            print(f"prefilter attached (tcx ingress, {SERVER}/demo1)")
            show("no entries:")
            key = PrefilterKey.of(f"{CLIENT_IP}/32")
            cidrs.update(key, PrefilterEntry(action=PrefilterAction.DROP, rule_id=1))
            show(f"deny {CLIENT_IP}/32 written to {MAP_NAME}:")
            entry = cidrs.lookup(key)
            print(f"  counters of the entry: packets={entry.packets if entry else 0}")
            cidrs.delete(key)
            show("entry deleted:")
            with netns.entered(SERVER):
                link.detach()
    finally:
        netns.remove(CLIENT)
        netns.remove(SERVER)


if __name__ == "__main__":
    main()
