"""Waiting for the newest frame, shared by every camera driver that keeps one frame under a condition."""
from __future__ import annotations

import threading
import time
from typing import Optional


class NewestFrameWaiter:
    """Mixin for drivers whose thread stores the newest frame in ``_latest`` and notifies ``_cond``.

    The driver sets ``error`` when it gave up, and answers ``_no_more_frames()`` (stopped, file ended) so
    a waiter returns at once instead of sleeping out its timeout.
    """

    _cond: threading.Condition
    _latest: Optional[object]
    error: Optional[BaseException]

    def _no_more_frames(self) -> bool:
        raise NotImplementedError

    def wait_for_frame(self, timeout: float = 1.0, after_seq: Optional[int] = None):
        """Block until a frame newer than ``after_seq`` (default: the current one) arrives; None on timeout
        or when no more frames will come. Raises the driver's error once it gave up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if after_seq is None:
                after_seq = self._latest.seq if self._latest is not None else 0
            while True:
                if self.error is not None:
                    raise self.error
                if self._latest is not None and self._latest.seq > after_seq:
                    return self._latest
                left = deadline - time.monotonic()
                if left <= 0 or self._no_more_frames():
                    return None
                self._cond.wait(left)
