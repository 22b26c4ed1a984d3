"""How long until a picture is on screen: a moving average of run times. No I/O.

Runs of up to `[model] max_batch` requests take the moving average each; every picture
then holds the screen `min_display_seconds`, and a run starts only once the deck is empty.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Estimates:
    avg_seconds: float  # moving average of one run, from the first estimate on
    running_since: float = 0.0
    timed: bool = False  # the current run's time went into the average already

    def start_run(self, now: float) -> None:
        self.running_since = now
        self.timed = False

    def time_run(self, now: float) -> None:
        """The first result of a run times it (a batch's results arrive together)."""
        if not self.timed and now > self.running_since:
            self.avg_seconds = 0.7 * self.avg_seconds + 0.3 * (now - self.running_since)
        self.timed = True

    def eta(
        self,
        position: int,
        now: float,
        *,
        running: int,
        deck: int,
        shown_at: float,
        hold: float,
        per_run: int,
    ) -> float:
        """Seconds until the request at this queue position is on screen.

        `running`: requests in the current run; `deck`: finished pictures waiting;
        `shown_at` and `hold`: when the screen last changed and its minimum time.
        """
        free = max(now, shown_at + hold) if hold else now  # screen takes the next one

        def show(ready: float, pictures: int) -> float:
            nonlocal free
            last = ready
            for _ in range(pictures):
                last = max(free, ready)
                free = last + hold
            return last

        last = show(now, deck)
        done = now
        if running:
            done = now + max(self.avg_seconds - (now - self.running_since), 0.0)
            last = show(done, running)
        per_run = max(1, per_run)
        left = position
        while True:
            done = max(done, last) + self.avg_seconds
            last = show(done, min(per_run, left))
            left -= per_run
            if left <= 0:
                return last - now
