"""Wrong secrets per address, and how long to wait before refusing the next one.

One rule for every door that takes a secret (the OBS link's token, the review page's keys):
a few free tries, then a wait that doubles per failure up to a cap, forgotten after a quiet
spell, in bounded memory.
"""

from __future__ import annotations

import time

FREE_FAILURES = 3  # wrong secrets from one address before answers slow down
MAX_PENALTY = 10.0  # seconds: the longest wait imposed before refusing a secret
FAILURE_MEMORY = 300.0  # seconds after which an address's failures are forgotten
MAX_ADDRESSES = 10000  # remembered at once; a scan past this starts over (bounded memory)


class FailedAttempts:
    """Failures per peer address; `penalty` says how long to hold the next answer."""

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}

    def count(self, peer: str) -> int:
        """Recent wrong secrets from `peer`."""
        count, last = self._failures.get(peer, (0, 0.0))
        return 0 if time.monotonic() - last > FAILURE_MEMORY else count

    def penalty(self, peer: str) -> float:
        """Seconds to wait before answering a wrong secret from `peer` (grows per failure)."""
        count = self.count(peer)
        return (
            0.0 if count < FREE_FAILURES else min(MAX_PENALTY, 0.5 * 2 ** (count - FREE_FAILURES))
        )

    def failed(self, peer: str) -> None:
        self._failures[peer] = (self.count(peer) + 1, time.monotonic())
        if len(self._failures) > MAX_ADDRESSES:
            self._failures.clear()

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)
