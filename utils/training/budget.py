"""Epochs by time: ``--time-budget`` fits a run's number of epochs to a wall-clock budget.

The budget counts from the process's start (imports included, as a user's watch does). After
each epoch the run measures what an epoch costs and what an mIoU evaluation costs (the median
of those so far, so that one slow epoch does not hold the count down), and sets
the total to the most epochs, up to ``--unfreeze-epoch``, whose steps and due evaluations still
end inside the budget. The LR schedule follows the new total from the next epoch on, so the
LR still decays to ``--min-lr`` at the last epoch. The first epoch (start-up and warm-up) is
left out of the estimate once a second one has run; an evaluation not yet measured is taken
to cost as much as an epoch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class EpochBudget:
    """The epoch count that fits in ``seconds`` (0: no budget), refitted after each epoch."""

    seconds: float
    eval_period: int
    evaluates: bool
    epoch_seconds: list[float] = field(default_factory=list)  # each epoch, evaluation apart
    eval_seconds: list[float] = field(default_factory=list)

    def record(self, epoch_seconds: float, eval_seconds: float | None = None) -> None:
        """One epoch's wall time, and that of its mIoU evaluation when it ran one."""
        if eval_seconds is not None:
            self.eval_seconds.append(eval_seconds)
            epoch_seconds -= eval_seconds
        self.epoch_seconds.append(epoch_seconds)

    def total(self, done: int, elapsed: float, cap: int) -> int:
        """The number of epochs the run should have, at least ``done`` and at most ``cap``,
        given ``elapsed`` seconds since the process started."""
        if not self.seconds or not self.epoch_seconds:
            return cap
        epoch = statistics.median(self.epoch_seconds[1:] or self.epoch_seconds)
        evaluation = statistics.median(self.eval_seconds) if self.eval_seconds else epoch
        total, clock = done, elapsed
        while total < cap:
            due = self.evaluates and (total + 1) % self.eval_period == 0
            cost = epoch + (evaluation if due else 0.0)
            if clock + cost > self.seconds:
                break
            clock += cost
            total += 1
        return total
