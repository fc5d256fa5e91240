"""Reconnect backoff: the one schedule adapters wait by after a failed connect or poll."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """``initial`` doubling up to ``cap``, each delay scaled by a random factor in
    [``low``, ``high``] so that restarted processes do not retry in step.

    :meth:`next` counts attempts itself; :meth:`delay` is the same for a caller that
    counts its own failures.
    """

    initial: float = 2.0
    cap: float = 30.0
    low: float = 0.8
    high: float = 1.2
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry)."""
        base = min(self.cap, self.initial * (2 ** min(attempt, 32)))
        return base * self.rng.uniform(self.low, self.high)

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        wait = self.delay(self.attempt)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """After a success the next failure starts from ``initial`` again."""
        self.attempt = 0
