"""Hooks: what the host loop does besides running chunks and evaluating (progress, callbacks, TensorBoard,
checkpoints: :class:`simdl.runtime.checkpoint.Checkpoint`), as objects the loop calls at fixed points.

A hook sees the :class:`simdl.runtime.loop.Loop` it is attached to (``steps``, ``done``, ``state``, ``recorders``,
``diverged``, ``names``, ``batched``) and must not change it; a hook that resumes a run returns a :class:`Resume`
from :meth:`Hook.on_start` and the loop applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class Resume(NamedTuple):
    """Where a resumed run continues: ``done`` steps, the run ``state`` (the loop's layout), one
    :class:`simdl.runtime.record.Recorder` per run and each run's ``diverged`` step (or None)."""

    done: int
    state: Any
    recorders: list
    diverged: list


class Hook:
    """Base class: every method does nothing. Subclass and override what you need."""

    def on_start(self, loop) -> Resume | None:
        """Called once before the first chunk (after a previous hook's resume was applied)."""
        return None

    def on_evaluation(self, loop, rows: list[dict | None]) -> None:
        """Called after every evaluation with one history row per run (None for a run that diverged before)."""

    def close(self) -> None:
        """Called once when the loop ends, also on an error or an interrupt."""


class Callback(Hook):
    """Calls ``fn(step, row)`` after every evaluation of a single run (not for a diverged run's missing row), or
    ``fn(step, rows)`` with one row per run (None once a run diverged) when ``per_run=True``."""

    def __init__(self, fn: Callable, per_run: bool = False):
        self.fn, self.per_run = fn, per_run

    def on_evaluation(self, loop, rows):
        if self.per_run:
            self.fn(loop.done, rows)
        elif rows[0] is not None:
            self.fn(loop.done, rows[0])


class ProgressBar(Hook):
    """A tqdm bar over steps, with the latest mean loss of the first run still going."""

    def __init__(self, desc: str | None = None):
        self.desc, self.bar = desc, None

    def on_start(self, loop):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=loop.steps, initial=loop.done, desc=self.desc or loop.names[0], leave=False)
        return None

    def on_evaluation(self, loop, rows):
        self.bar.update(loop.done - self.bar.n)
        alive = [r for r in rows if r is not None]
        if alive:
            self.bar.set_postfix(loss=f"{alive[0]['loss']:.4g}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class TensorBoard(Hook):
    """Writes every run's history rows as TensorBoard scalars under ``root/<run name>``
    (:class:`simdl.tensorboard.RunWriter`; ``names``: one per run, default the loop's names).

    Raises:
      ImportError: tensorboardX is not installed (when the loop starts).
    """

    def __init__(self, root, names: Sequence[str] | None = None):
        self.root, self.names, self.writers = root, names, []

    def on_start(self, loop):
        from simdl.tensorboard import RunWriter

        self.writers = [RunWriter(self.root, name) for name in (self.names or loop.names)]
        return None

    def on_evaluation(self, loop, rows):
        for writer, row in zip(self.writers, rows, strict=True):
            if row is not None:
                writer.add_row(row)

    def close(self):
        for writer in self.writers:
            writer.close()
