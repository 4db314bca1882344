"""BPF_PROG_TEST_RUN: run a loaded program on a crafted packet, without sending anything."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from sluice.loader.btf import BtfKind, vmlinux_btf
from sluice.loader.libbpf import TestRunOpts, check, lib
from sluice.loader.objects import Program

# Room for headers a program may push (encapsulation) on top of the input.
OUTPUT_HEADROOM = 512


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes | None


def skb_context(**fields: int) -> bytes:
    """A `struct __sk_buff` for tc test runs, laid out from the kernel's own BTF.

    The kernel accepts a few fields (ifindex, ingress_ifindex, mark, priority, ...);
    with `ifindex` the packet appears to arrive on that device of the caller's namespace.
    """
    btf = vmlinux_btf()
    type_id = btf.find("__sk_buff", BtfKind.STRUCT)
    members = {m.name: m for m in btf.members(type_id)}
    ctx = bytearray(btf.size(type_id))
    for name, value in fields.items():
        member = members[name]
        size = btf.size(member.type_id)
        offset = member.bit_offset // 8
        ctx[offset:offset + size] = value.to_bytes(size, "little")
    return bytes(ctx)


def test_run(prog: Program, data: bytes, *, ctx: bytes | None = None, repeat: int = 1,
             ctx_out_size: int | None = None) -> TestRunResult:
    """Run PROG on DATA. With repeat > 1, duration_ns is the kernel's mean per run.

    Maps are real: whatever the program writes (conntrack, counters) stays written.
    """
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + OUTPUT_HEADROOM)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = len(data_out)
    opts.repeat = repeat
    ctx_in = ctx_out = None
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx))
        ctx_out = ctypes.create_string_buffer(ctx_out_size or len(ctx))
        opts.ctx_in = ctypes.cast(ctx_in, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
        opts.ctx_out = ctypes.cast(ctx_out, ctypes.c_void_p)
        opts.ctx_size_out = len(ctx_out)
    check(lib().bpf_prog_test_run_opts(prog.fd, ctypes.byref(opts)),
          f"test-running program {prog.name}")
    return TestRunResult(
        retval=opts.retval,
        data=data_out.raw[: opts.data_size_out],
        duration_ns=opts.duration,
        ctx=ctx_out.raw[: opts.ctx_size_out] if ctx_out is not None else None,
    )


# Names starting with "test" must not be collected by pytest where tests import them.
test_run.__test__ = False  # type: ignore[attr-defined]
TestRunResult.__test__ = False  # type: ignore[attr-defined]
