"""Poll a BPF ring buffer map and hand each record to a Python callback."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from sluice.loader.libbpf import RingBufferSampleFn, check, check_ptr, lib


class RingBuffer:
    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        self._on_record = on_record
        self._error: BaseException | None = None
        self._callback = RingBufferSampleFn(self._sample)
        handle = lib().ring_buffer__new(map_fd, self._callback, None, None)
        check_ptr(ctypes.cast(handle, ctypes.c_void_p).value, "creating ring buffer reader")
        self._handle: Any = handle

    def _sample(self, _ctx: int | None, data: int, size: int) -> int:
        try:
            self._on_record(ctypes.string_at(data, size))
        except BaseException as err:  # surfaced by poll(); C must not unwind
            self._error = err
            return -1
        return 0

    def poll(self, timeout_ms: int) -> int:
        """Wait up to TIMEOUT_MS for records; returns how many were consumed."""
        count = lib().ring_buffer__poll(self._handle, timeout_ms)
        self._raise_pending()
        return check(count, "polling ring buffer") if count != -4 else 0  # EINTR

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        if self._handle:
            lib().ring_buffer__free(self._handle)
            self._handle = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
