"""Progress reporting without a UI: stages call a plain callback, the CLI turns the events into rich bars.

A callback is ``callback(event: str, **data)``. Events used by the stages:

- ``teacher.start`` (key, epochs, member), ``teacher.epoch`` (epoch, epochs, loss), ``teacher.done`` (source:
  "cache" | "trained" | "checkpoint", val_accuracy, test_accuracy, path, weights_hash), ``teacher.corrupt`` (path,
  reason, moved_to, stale: computed on other data), ``teacher.wait`` (key, path, what: another worker holds the
  lock of this cache file)
- ``trial.start`` (number, params), ``trial.phase`` (phase, epochs), ``trial.epoch`` (phase, epoch, epochs, loss),
  ``trial.done`` (number, metrics, seconds), ``trial.fail`` (number, reason), ``trial.duplicate`` (number,
  duplicate_of), ``trial.taken`` (number, state, reason: another worker finished this worker's trial),
  ``trial.stopped`` (number, reason, epochs, phase, epoch, val_accuracy, bound, by: early stopping)
- ``study.resume`` (complete, target), ``study.stale`` (number), ``study.enqueue`` (number, reason),
  ``study.local_artifacts`` (path), ``study.neighbours`` (workers, threads, cores, suggested)
"""

from __future__ import annotations

from typing import Any, Protocol


class ProgressCallback(Protocol):
    def __call__(self, event: str, **data: Any) -> None: ...


def silent(event: str, **data: Any) -> None:
    """The default callback: report nothing."""


class EventLog:
    """A callback that keeps every event, for scripts and tests: ``log = EventLog(); run_search(space,
    progress=log); log.names()``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **data: Any) -> None:
        self.events.append((event, data))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        """The data of every ``name`` event, in order."""
        return [data for event, data in self.events if event == name]
