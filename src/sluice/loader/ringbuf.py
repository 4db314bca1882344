"""Poll a BPF ring buffer map and hand each record to a Python callback."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any

from sluice.loader.libbpf import RingBufferSampleFn, check, check_ptr, lib

log = logging.getLogger("sluice.ringbuf")


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

    def consume(self) -> int:
        """Read whatever records are there, without waiting (records sent without a
        wake-up are only found this way); returns how many were consumed."""
        count = lib().ring_buffer__consume(self._handle)
        self._raise_pending()
        return check(count, "consuming ring buffer")

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


class RingBufferReader:
    """A ring buffer read on a thread of its own until stopped: each round waits up to
    POLL_MS for a wake-up, then also reads records sent without one."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None], *, name: str,
                 poll_ms: int = 100) -> None:
        self._ring = RingBuffer(map_fd, on_record)
        self._poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._ring.poll(self._poll_ms):
                    self._ring.consume()
            except (OSError, ValueError) as err:
                log.warning("reading ring buffer (%s): %s", self._thread.name, err)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self._poll_ms / 1000 + 1)
        self._ring.close()
