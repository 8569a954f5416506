"""A bound on the computations (inference, scoring, decoding an upload) the server runs at once, and on how long a
request waits for one (``--conf max_parallel_infer``, ``infer_wait_s``)."""

from __future__ import annotations

import threading
from typing import Any, Dict

from lib.conf_values import positive_number

__all__ = ["ComputeGate", "MAX_WAIT_S"]

#: the longest ``infer_wait_s``: a day (a lock's timeout past ``threading.TIMEOUT_MAX`` raises when waited on)
MAX_WAIT_S = 86400.0


class ComputeGate:
    """At most ``slots`` computations at once; a caller that cannot start within ``wait_s`` is refused.

    Args: ``slots``: conf ``max_parallel_infer`` (default 2); ``wait_s``: conf ``infer_wait_s`` (default 120).
    """

    def __init__(self, slots: int = 2, wait_s: float = 120.0) -> None:
        if int(slots) < 1 or not float(wait_s) >= 0:
            raise ValueError(f"--conf max_parallel_infer must be >= 1 and infer_wait_s >= 0, got {slots}, {wait_s}")
        self.slots, self.wait_s = int(slots), float(wait_s)
        self._semaphore = threading.BoundedSemaphore(self.slots)

    @classmethod
    def from_conf(cls, conf: Dict[str, Any]) -> "ComputeGate":
        """The gate of ``--conf max_parallel_infer`` (a whole number >= 1) and ``infer_wait_s`` (0 to
        ``MAX_WAIT_S``); a bad value names its key."""
        slots = positive_number(conf, "max_parallel_infer", integer=True)
        wait_s = positive_number(conf, "infer_wait_s", zero=True, maximum=MAX_WAIT_S)
        return cls(int(slots) if slots is not None else 2, wait_s if wait_s is not None else 120.0)

    def acquire(self) -> bool:
        return self._semaphore.acquire(timeout=self.wait_s)

    def release(self) -> None:
        self._semaphore.release()
