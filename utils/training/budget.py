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

    def record(self, epoch_seconds: float) -> None:
        """One epoch's wall time, its mIoU evaluation apart."""
        self.epoch_seconds.append(epoch_seconds)

    def record_evaluation(self, seconds: float) -> None:
        """The wall time of one mIoU evaluation."""
        self.eval_seconds.append(seconds)

    def new_phase(self) -> None:
        """Epochs at another batch size (the original's frozen phase ends): timed afresh."""
        self.epoch_seconds.clear()

    def total(self, done: int, elapsed: float, cap: int) -> int:
        """The number of epochs the run should have, at least ``done`` and at most ``cap``,
        given ``elapsed`` seconds since the process started."""
        if not self.seconds or not self.epoch_seconds:
            return cap
        epoch = statistics.median(self.epoch_seconds[1:] or self.epoch_seconds)
        evaluation = statistics.median(self.eval_seconds) if self.eval_seconds else epoch
        total, clock = done, elapsed
        if self.evaluates and done % self.eval_period == 0:  # the epoch just trained evaluates
            clock += evaluation
        while total < cap:  # one more epoch, whose evaluation is due or is the last one
            due = self.evaluates and (total + 1) % self.eval_period == 0
            if clock + epoch + (evaluation if due else 0.0) > self.seconds:
                break
            clock += epoch + (evaluation if due else 0.0)
            total += 1
        last = self.evaluates and total % self.eval_period != 0  # the cut epoch evaluates too
        if last and total > done and clock + evaluation > self.seconds:
            total -= 1
        return total
