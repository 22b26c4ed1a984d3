"""The fair queue: round-robin across viewers, and which waiting requests share a run.

One viewer's many requests never block everyone else: each viewer has their own line,
and turns go round. Requests marked `ahead` (paid ones: a cheer, a channel-point
redemption, when the streamer's settings say so) go round first, then the free ones: a
paid request waits only behind other paid ones. A batch is the next request in that order
plus the compatible ones behind it (`batch_key`, which the engine also uses to group a
batch into pipeline calls); a viewer's later request never runs before their earlier one
of the same tier. No I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from generator_host.core.generation import GenerationParams, GenerationRequest


def batch_key(params: GenerationParams) -> tuple[int, float, int, int]:
    """What one pipeline call needs equal (steps, guidance, size); prompts, negative prompts
    and counts may differ. The show batches by it and `Engine.generate_many` groups by it."""
    return (params.steps, params.guidance, params.width, params.height)


class FairQueue:
    """Waiting requests (not the running ones), one line per viewer login."""

    def __init__(self) -> None:
        self._lines: dict[str, deque[GenerationRequest]] = {}
        self._turns: deque[str] = deque()  # round-robin order of viewers with a line

    def __len__(self) -> int:
        """Requests waiting: counted from the lines, never kept by hand."""
        return sum(map(len, self._lines.values()))

    def __bool__(self) -> bool:
        return bool(self._lines)

    def line(self, login: str) -> deque[GenerationRequest] | None:
        """A viewer's waiting requests, oldest first (None when they have none)."""
        return self._lines.get(login)

    def add(self, request: GenerationRequest, front: bool = False) -> None:
        """At the back of the viewer's line; `front`: first in line and first turn (a run
        interrupted by !terminate goes back where it was)."""
        login = request.requester.login
        line = self._lines.get(login)
        if line is None:
            line = self._lines[login] = deque()
            (self._turns.appendleft if front else self._turns.append)(login)
        elif front and login in self._turns:
            self._turns.remove(login)
            self._turns.appendleft(login)
        (line.appendleft if front else line.append)(request)

    def order(self) -> list[GenerationRequest]:
        """The waiting requests in the order they will run: round-robin across viewers,
        the `ahead` ones first."""
        out: list[GenerationRequest] = []
        for ahead in (True, False):
            rounds = [[r for r in self._lines[login] if r.ahead == ahead] for login in self._turns]
            depth, total = 0, sum(map(len, rounds))
            while total:
                taken = [reqs[depth] for reqs in rounds if len(reqs) > depth]
                out += taken
                total -= len(taken)
                depth += 1
        return out

    def __iter__(self) -> Iterator[GenerationRequest]:
        return iter(self.order())

    def position(self, request_id: str) -> int:
        """1-based place in the running order; 0 when not waiting."""
        for place, request in enumerate(self.order(), 1):
            if request.id == request_id:
                return place
        return 0

    def drop(self, match: Callable[[GenerationRequest], bool]) -> int:
        """Remove the matching waiting requests; returns how many."""
        dropped = 0
        for login in list(self._turns):
            line = self._lines[login]
            keep = deque(r for r in line if not match(r))
            dropped += len(line) - len(keep)
            if keep:
                self._lines[login] = keep
            else:
                del self._lines[login]
                self._turns.remove(login)
        return dropped

    def next_batch(self, max_batch: int) -> list[GenerationRequest]:
        """Take the next request in fair order plus compatible ones behind it, up to
        max_batch. A viewer whose earlier request is skipped (other settings) is skipped
        entirely, so nobody's own requests run out of order."""
        order = self.order()
        if not order:
            return []
        batch = [order[0]]
        key = batch_key(batch[0].params)
        blocked: set[str] = set()
        for request in order[1:]:
            if len(batch) >= max(1, max_batch):
                break
            login = request.requester.login
            if login in blocked:
                continue
            if batch_key(request.params) == key:
                batch.append(request)
            else:
                blocked.add(login)
        return [self._take(r) for r in batch]

    def _take(self, request: GenerationRequest) -> GenerationRequest:
        """Remove the request from its viewer's line (the head of its tier: a batch only
        takes heads); that viewer's turn moves to the back."""
        login = request.requester.login
        line = self._lines[login]
        line.remove(request)
        self._turns.remove(login)
        if line:
            self._turns.append(login)
        else:
            del self._lines[login]
        return request
