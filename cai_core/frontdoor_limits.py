"""What the front door allows: the upload cap, uploads in flight, a login's lifetime, and the throttle on failed
logins. Plain Python, without the web stack: `serve` reads the upload cap from here without loading it."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_UPLOAD_MB = 200  # Streamlit's own default for one file
MULTIPART_OVERHEAD = 64 * 1024  # a capped upload's form framing around the file


@dataclass(frozen=True)
class Limits:
    max_upload_mb: int = MAX_UPLOAD_MB
    uploads_in_flight: int = 2  # per login
    login_hours: float = 12
    free_failures: int = 5  # per address, before the waits begin
    free_failures_overall: int = 50  # from all addresses together
    first_wait_s: float = 1.0
    max_wait_s: float = 300.0

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024 + MULTIPART_OVERHEAD


class FailedLogins:
    """Failed logins per client address and overall. After `free` failures each further one makes the next
    try wait twice as long as the last (from `first_wait_s`, at most `max_wait_s`); a success clears the
    address. Addresses are forgotten oldest first beyond `remembered`, so the table stays bounded."""

    def __init__(self, limits: Limits, clock=time.monotonic, remembered: int = 10_000):
        self.limits, self.clock, self.remembered = limits, clock, remembered
        self.by_address: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address → (failures, wait until)
        self.overall: tuple[int, float] = (0, 0.0)

    def wait_s(self, address: str) -> float:
        """Seconds before ADDRESS may try again (0: now)."""
        until = max(self.by_address.get(address, (0, 0.0))[1], self.overall[1])
        return max(0.0, until - self.clock())

    def _after(self, failures: int, free: int) -> float:
        if failures <= free:
            return 0.0
        wait = min(self.limits.max_wait_s, self.limits.first_wait_s * 2 ** (failures - free - 1))
        return self.clock() + wait

    def failed(self, address: str) -> None:
        failures = self.by_address.pop(address, (0, 0.0))[0] + 1
        self.by_address[address] = (failures, self._after(failures, self.limits.free_failures))
        while len(self.by_address) > self.remembered:
            self.by_address.popitem(last=False)
        overall = self.overall[0] + 1
        self.overall = (overall, self._after(overall, self.limits.free_failures_overall))

    def succeeded(self, address: str) -> None:
        self.by_address.pop(address, None)
