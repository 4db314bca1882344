"""Host checks for `sluice doctor`: does this machine have what the dataplane needs?

Each check is a small function that returns an `Outcome`; `run_checks` runs them all
and turns each into a `CheckResult`. Checks that load or attach something share one
`Session`, which owns every temporary object (the probes BPF object, a network
namespace with a veth pair, a child cgroup) and removes them in `close()`.

Safety: nothing is attached to the root network namespace or the root cgroup, and no
link, address, route or sysctl of the root namespace is changed. Devices live in a
temporary namespace made for this run; cgroup hooks go on a temporary child cgroup.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

from sluice import bpffs, cgroups
from sluice.loader import (
    BpfObject,
    ClsactFilter,
    Direction,
    LibbpfError,
    Link,
    XdpMode,
    attach_cgroup,
    attach_clsact,
    attach_tcx,
    attach_xdp,
)
from sluice.loader import objects as _objects
from sluice.loader.btf import vmlinux_btf
from sluice.loader.libbpf import lib
from sluice.loader.maps import MapType
from sluice.loader.ringbuf import RingBuffer
from sluice.loader.testrun import test_run

TEMP_PREFIX = "sluice-doctor-"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
JIT_SYSCTL = "/proc/sys/net/core/bpf_jit_enable"
REQUIRED_OBJECTS = ("prefilter", "probes")
BPF_SOURCE_DIR = Path(__file__).resolve().parents[2] / "bpf"  # only in a source checkout
TOOLS = ("iptables", "iptables-restore", "ip", "tc")
VETH = "sd-veth0"
VETH_PEER = "sd-veth1"
EM_BPF = 247
CGROUP_PROGRAMS = (
    "probe_connect4", "probe_connect6",
    "probe_sendmsg4", "probe_sendmsg6",
    "probe_recvmsg4", "probe_recvmsg6",
    "probe_getpeername4", "probe_getpeername6",
)


class Verdict(StrEnum):
    OK = "ok"
    MISSING = "missing"
    WARNING = "warning"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str


def ok(detail: str) -> Outcome:
    return Outcome(Verdict.OK, detail)


def missing(detail: str) -> Outcome:
    return Outcome(Verdict.MISSING, detail)


def warning(detail: str) -> Outcome:
    return Outcome(Verdict.WARNING, detail)


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    detail: str
    required: bool

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "verdict": self.verdict.value}


def short_error(exc: BaseException) -> str:
    """One line for a detail column (a verifier error carries a whole log)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the body runs, then let them through.

    Creating or removing a temporary object must not be cut in half: a namespace made
    after its name was checked for removal, or a cgroup made but not yet recorded, would
    outlive the run.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class DoctorRootNamespaceError(RuntimeError):
    """Raised when a step meant for the temporary namespace finds itself in the root one."""


def _netns_id(path: str = "/proc/thread-self/ns/net") -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _host_netns_ids() -> set[tuple[int, int]]:
    """The namespace this process runs in, and init's when it is visible to us."""
    ids = {_netns_id()}
    with suppress(OSError):
        ids.add(_netns_id("/proc/1/ns/net"))
    return ids


def _netns() -> ModuleType:
    """sluice.netns, imported on first use: it pulls in pyroute2, which every other
    `sluice` command would otherwise pay for when the CLI builds its parsers."""
    from sluice import netns  # noqa: PLC0415

    return netns


def _iproute() -> Any:
    """A pyroute2 IPRoute bound to the calling thread's current network namespace."""
    from pyroute2 import IPRoute  # noqa: PLC0415

    return IPRoute()


class Session:
    """The temporary objects of one doctor run; `close()` removes every one of them."""

    def __init__(self) -> None:
        self.tag = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self._probes: BpfObject | None = None
        self._probes_error: Exception | None = None
        self._netns: str | None = None
        self._netns_ready = False
        self._netns_error: Exception | None = None
        self._host_netns = _host_netns_ids()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def probes(self) -> BpfObject:
        """The `probes` BPF object, opened and loaded once."""
        if self._probes_error is not None:
            raise RuntimeError(f"probes object did not load: {short_error(self._probes_error)}")
        if self._probes is None:
            try:
                obj = BpfObject.open("probes")
            except Exception as exc:
                self._probes_error = exc
                raise
            try:
                obj.load()
            except Exception as exc:
                obj.close()
                self._probes_error = exc
                raise
            self._probes = obj
        return self._probes

    def _refuse_host_netns(self) -> None:
        """Guard for code meant to run in the temporary namespace."""
        if _netns_id() in self._host_netns:
            raise DoctorRootNamespaceError("refusing to touch the host network namespace")

    def _make_netns(self) -> None:
        with deferred_interrupts():
            self._netns = self.tag  # recorded first: close() removes a half-made namespace
            _netns().create(self.tag)
        with _netns().entered(self.tag):
            self._refuse_host_netns()
            with _iproute() as ipr:
                ipr.link("add", ifname=VETH, kind="veth", peer=VETH_PEER)
                for ifname in (VETH, VETH_PEER):
                    ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")

    @contextmanager
    def in_netns(self) -> Iterator[dict[str, int]]:
        """Enter the temporary namespace (made on first use); yields its veths' indexes."""
        if self._netns_error is not None:
            raise RuntimeError(
                f"temporary namespace not available: {short_error(self._netns_error)}")
        if not self._netns_ready:
            try:
                self._make_netns()
            except Exception as exc:
                self._netns_error = exc
                raise
            self._netns_ready = True
        assert self._netns is not None
        with _netns().entered(self._netns):
            self._refuse_host_netns()
            indexes: dict[str, int] = {}
            with _iproute() as ipr:
                for ifname in (VETH, VETH_PEER):
                    found = ipr.link_lookup(ifname=ifname)
                    if not found:
                        raise RuntimeError(f"{ifname} vanished from namespace {self._netns}")
                    indexes[ifname] = int(found[0])
            yield indexes

    def close(self) -> None:
        with deferred_interrupts():
            try:
                if self._probes is not None:
                    self._probes.close()
                    self._probes = None
            finally:
                if self._netns is not None:
                    _netns().remove(self._netns)  # its veth pair goes with it
                    self._netns = None


# --- the checks ------------------------------------------------------------------------


def check_btf(session: Session) -> Outcome:
    if not os.path.exists(VMLINUX_BTF):
        return missing(f"{VMLINUX_BTF} not found (kernel built without CONFIG_DEBUG_INFO_BTF)")
    return ok(f"{vmlinux_btf().type_count()} types in {VMLINUX_BTF}")


def check_bpffs(session: Session) -> Outcome:
    if bpffs.is_mounted(bpffs.DEFAULT_PATH):
        return ok(f"mounted at {bpffs.DEFAULT_PATH}")
    bpffs.ensure_bpffs(bpffs.DEFAULT_PATH)
    return ok(f"mounted by doctor at {bpffs.DEFAULT_PATH}")


def check_cgroup2(session: Session) -> Outcome:
    found = cgroups.find_cgroup2_mount()
    path = cgroups.ensure_cgroup2()
    return ok(path if found else f"{path} (private mount made by doctor)")


def _is_bpf_elf(path: Path) -> bool:
    with path.open("rb") as elf:
        header = elf.read(20)
    return header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_BPF


def check_objects(session: Session) -> Outcome:
    obj_dir = _objects.OBJECT_DIR  # read at call time: tests point it elsewhere
    expected = set(REQUIRED_OBJECTS)
    if BPF_SOURCE_DIR.is_dir():
        expected |= {src.stem for src in BPF_SOURCE_DIR.glob("*.c")}
    present = {p.name.removesuffix(".bpf.o") for p in obj_dir.glob("*.bpf.o")}
    absent = sorted(expected - present)
    if absent:
        names = ", ".join(f"{n}.bpf.o" for n in absent)
        return missing(f"{names} not in {obj_dir} (run make -C bpf)")
    broken = sorted(n for n in present if not _is_bpf_elf(obj_dir / f"{n}.bpf.o"))
    if broken:
        return missing(f"not BPF ELF objects: {', '.join(broken)} (run make -C bpf)")
    return ok(f"{', '.join(sorted(present))} in {obj_dir}")


def check_jit(session: Session) -> Outcome:
    try:
        value = Path(JIT_SYSCTL).read_text(encoding="ascii").strip()
    except OSError as exc:
        return warning(f"cannot read {JIT_SYSCTL}: {exc.strerror}")
    if value == "1":
        return ok("enabled")
    if value == "2":
        return ok("enabled (with debug output)")
    return warning(f"net.core.bpf_jit_enable = {value}: programs run interpreted (slow)")


def _map_type_check(map_name: str, map_type: MapType) -> Callable[[Session], Outcome]:
    def check(session: Session) -> Outcome:
        supported = lib().libbpf_probe_bpf_map_type(int(map_type), None)
        if supported < 0:
            return missing(f"kernel probe failed: {os.strerror(-supported)}")
        if supported == 0:
            return missing("not supported by this kernel")
        try:
            created = map_name in session.probes().map_names()
        except Exception as exc:
            return ok(f"supported (libbpf probe); probes object: {short_error(exc)}")
        return ok(f"{map_name} created" if created else "supported (libbpf probe)")
    check.__name__ = f"check_{map_name}"
    return check


def _attach_tc(session: Session, mode: str) -> None:
    """Attach probe_tc with tcx or clsact: ingress of one veth end, egress of the other.

    (Two devices, so clsact's qdisc is created once per device: a second create on the
    same device makes libbpf log the kernel's "exclusivity flag" refusal.)
    """
    prog = session.probes().program("probe_tc")
    with session.in_netns() as indexes:
        attached: list[Link | ClsactFilter] = []
        try:
            for ifname, direction in ((VETH, Direction.INGRESS), (VETH_PEER, Direction.EGRESS)):
                ifindex = indexes[ifname]
                if mode == "tcx":
                    attached.append(attach_tcx(prog, ifindex, direction))
                else:
                    attached.append(attach_clsact(prog, ifindex, direction))
        finally:
            for item in reversed(attached):
                item.detach()


def _tc_check(mode: str, other: str) -> Callable[[Session], Outcome]:
    def check(session: Session) -> Outcome:
        try:
            _attach_tc(session, mode)
        except (LibbpfError, OSError) as exc:
            reason = short_error(exc)
            try:
                _attach_tc(session, other)
            except Exception:
                return missing(f"{reason}; {other} fails too")
            return warning(f"{reason}; {other} works and is used instead")
        return ok("probe_tc attached to veth ingress and egress, detached")
    check.__name__ = f"check_{mode}"
    return check


def check_xdp(session: Session) -> Outcome:
    prog = session.probes().program("probe_xdp")
    with session.in_netns() as indexes:
        link = attach_xdp(prog, indexes[VETH], XdpMode.NATIVE)
        link.detach()
    return ok("probe_xdp attached in native mode to a veth, detached")


def check_cgroup_hooks(session: Session) -> Outcome:
    probes = session.probes()
    path = os.path.join(cgroups.ensure_cgroup2(), session.tag)
    links: list[Link] = []
    failed: list[str] = []
    try:
        with deferred_interrupts():
            cgroups.create(session.tag)
        for name in CGROUP_PROGRAMS:
            hook = name.removeprefix("probe_")
            try:
                links.append(attach_cgroup(probes.program(name), path))
            except (LibbpfError, OSError) as exc:
                code = errno.errorcode.get(exc.errno) if exc.errno else None
                failed.append(f"{hook} ({code or short_error(exc)})")
    finally:
        with deferred_interrupts():
            try:
                for link in links:
                    link.detach()
            finally:
                cgroups.remove_tree(path)  # a no-op if it was never made
    if failed:
        return missing(f"refused: {', '.join(failed)}")
    hooks = sorted({n.removeprefix("probe_").rstrip("46") for n in CGROUP_PROGRAMS})
    return ok(f"{'/'.join(hooks)} (v4+v6) attached to a temporary cgroup, detached")


RINGBUF_PROBE_PACKET = bytes(60)  # a minimum-size Ethernet frame; its content is irrelevant


def check_ringbuf_output(session: Session) -> Outcome:
    """probe_tc reports each packet's length through the ring buffer: run it once."""
    probes = session.probes()
    records: list[bytes] = []
    with RingBuffer(probes.map_fd("probe_ringbuf"), records.append) as ring:
        ring.poll(timeout_ms=0)  # records of packets the tc checks saw
        records.clear()
        test_run(probes.program("probe_tc"), RINGBUF_PROBE_PACKET)
        ring.poll(timeout_ms=1000)
    if [int.from_bytes(r, "little") for r in records] != [len(RINGBUF_PROBE_PACKET)]:
        return missing(f"expected one record of {len(RINGBUF_PROBE_PACKET)}, got {records!r}")
    return ok("a record written by a tc program under BPF_PROG_TEST_RUN was read back")


def check_tools(session: Session) -> Outcome:
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return warning(f"not on PATH: {', '.join(absent)} (the iptables dataplane needs them)")
    return ok(", ".join(TOOLS))


@dataclass(frozen=True)
class Check:
    name: str
    required: bool
    about: str
    run: Callable[[Session], Outcome]


CHECKS: tuple[Check, ...] = (
    Check("kernel BTF", True, f"{VMLINUX_BTF} exists and loads", check_btf),
    Check("bpffs", True, f"bpffs is mounted at {bpffs.DEFAULT_PATH} (mounted if not)",
          check_bpffs),
    Check("cgroup v2", True, "a cgroup2 hierarchy is mounted (privately mounted if not)",
          check_cgroup2),
    Check("BPF objects", True, "every BPF object is built (make -C bpf)", check_objects),
    Check("BPF JIT", False, "net.core.bpf_jit_enable is 1 (read only)", check_jit),
    Check("map: LPM trie", True, "the kernel creates LPM trie maps",
          _map_type_check("probe_lpm", MapType.LPM_TRIE)),
    Check("map: LRU hash", True, "the kernel creates LRU hash maps",
          _map_type_check("probe_lru", MapType.LRU_HASH)),
    Check("map: ring buffer", True, "the kernel creates ring buffer maps",
          _map_type_check("probe_ringbuf", MapType.RINGBUF)),
    Check("map: per-CPU array", True, "the kernel creates per-CPU array maps",
          _map_type_check("probe_percpu", MapType.PERCPU_ARRAY)),
    Check("tc: tcx", True, "a tc program attaches as a tcx link (warning if clsact works)",
          _tc_check("tcx", "clsact")),
    Check("tc: clsact", True, "a tc program attaches through clsact (warning if tcx works)",
          _tc_check("clsact", "tcx")),
    Check("XDP native", True, "an XDP program attaches in native mode to a veth", check_xdp),
    Check("cgroup socket hooks", True,
          "connect/sendmsg/recvmsg/getpeername v4+v6 attach to a cgroup", check_cgroup_hooks),
    Check("ring buffer output", True, "records a program writes reach user space",
          check_ringbuf_output),
    Check("tools", False, f"{', '.join(TOOLS)} are on PATH (iptables dataplane)", check_tools),
)


def run_check(check: Check, session: Session) -> CheckResult:
    try:
        outcome = check.run(session)
    except Exception as exc:  # any failure of a probe is that check's verdict
        outcome = missing(short_error(exc))
    verdict = outcome.verdict
    if not check.required and verdict is Verdict.MISSING:
        verdict = Verdict.WARNING  # optional checks never fail the run
    return CheckResult(check.name, verdict, outcome.detail, check.required)


def run_checks(checks: tuple[Check, ...] = CHECKS) -> list[CheckResult]:
    """Run every check; all temporary namespaces, devices and cgroups are gone on return."""
    with Session() as session:
        return [run_check(check, session) for check in checks]


def passed(results: list[CheckResult]) -> bool:
    """True when no required check failed (warnings do not fail)."""
    return not any(r.verdict is Verdict.MISSING for r in results)
