"""What the distillation loop does besides training, as hooks in the spirit of clu's periodic actions.

`distill` reports at fixed steps (every `report_every` steps, every `every` steps of each hook, and after the last
step): it brings that window's metrics to the host, stops on a non-finite loss, and calls every hook with a
`Report`. Hooks log (`LogMetrics`), checkpoint and resume (`SaveCheckpoints`), or end the run early by returning a
`Stop` (`Prune`): the loop then returns its result as it stands, marked as stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from kdjax.checkpoint import Checkpointer
    from kdjax.optim import TrainState


@dataclasses.dataclass(frozen=True)
class Report:
    """The run as it stands after `step` steps, with the metrics of every step so far on the host."""

    step: int  # steps done
    num_steps: int
    state: TrainState  # on the device; a hook that keeps it must copy or save it before the next step donates it
    means: dict[str, float]  # each metric averaged over the steps since the previous report
    last_loss: float
    epoch_losses: dict[int, float]  # mean loss of each epoch begun so far (the last one may be partial)
    resume_meta: dict  # what a checkpoint saved now needs, besides the state, to resume exactly here


class Stop(NamedTuple):
    """Returned by a hook to end the run after this report (the state is kept as it is)."""

    reason: str


class Hook:
    """A periodic action of `distill`; subclasses override what they need."""

    # A report after every `every`-th step as well (0: only the loop's own report steps).
    every: int = 0

    def restore(self, state: TrainState) -> tuple[int, TrainState, dict] | None:
        """(step, state, resume_meta) to continue from, or None to start fresh; `state` gives the layout."""
        return None

    def resume(self, step: int) -> None:
        """The run continues after `step` (restored from a checkpoint): forget what was recorded after it."""

    def __call__(self, report: Report) -> Stop | None:
        return None


class MetricSink(Protocol):
    """Where `LogMetrics` writes (kdjax.writer.MetricWriter, or a test's list)."""

    def write(self, step: int, scalars: dict) -> None: ...

    def truncate_after(self, step: int) -> None: ...


@dataclasses.dataclass
class LogMetrics(Hook):
    """Writes each report's window means; a resumed run first drops rows after its checkpoint, so the log of a
    resumed run matches an unbroken one (checkpoint steps are report steps, so no window spans a resume)."""

    writer: MetricSink

    def resume(self, step: int) -> None:
        self.writer.truncate_after(step)

    def __call__(self, report: Report) -> None:
        self.writer.write(report.step, report.means)


@dataclasses.dataclass
class SaveCheckpoints(Hook):
    """Offers every report to the checkpointer, whose Orbax policy saves every `every` steps and the last step (the
    checkpointer's interval; `every` makes those report steps); restores the newest good checkpoint first."""

    checkpointer: Checkpointer
    every: int = 0

    def restore(self, state: TrainState) -> tuple[int, TrainState, dict] | None:
        return self.checkpointer.restore(state)

    def __call__(self, report: Report) -> None:
        if self.checkpointer.should_save(report.step):
            self.checkpointer.save(report.step, report.state, report.resume_meta)


@dataclasses.dataclass
class Prune(Hook):
    """Stops the run after an epoch when `should_stop(epoch, mean loss of that epoch)` is true (search pruning)."""

    steps_per_epoch: int
    should_stop: Callable[[int, float], bool]

    def __post_init__(self) -> None:
        self.every = self.steps_per_epoch  # every epoch end is a report step

    def __call__(self, report: Report) -> Stop | None:
        if report.step % self.steps_per_epoch:
            return None
        epoch = report.step // self.steps_per_epoch - 1
        if self.should_stop(epoch, report.epoch_losses[epoch]):
            return Stop(f"pruned after epoch {epoch + 1}")
        return None


def report_steps(hooks: list[Hook], report_every: int) -> Callable[[int], bool]:
    """`due(done)`: whether step `done` is a multiple of `report_every` or of a hook's `every` (the loop also reports
    after its last step)."""
    periods = [p for p in (report_every, *(h.every for h in hooks)) if p]

    def due(done: int) -> bool:
        return any(done % p == 0 for p in periods)

    return due
