"""Checkpoints (orbax) of the full run state and history, the fingerprint that identifies a run for resuming, and the
:class:`Checkpoint` hook that writes and restores them."""

from __future__ import annotations

from pathlib import Path

import jax

from simdl.algorithms.base import Algorithm
from simdl.runtime.hooks import Hook, Resume
from simdl.runtime.record import Recorder
from simdl.tasks.base import Task


def run_fingerprint(task: Task, algorithm: Algorithm, topology, batch_size: int, seed: int, eval_every: int,
                    faults, compute_dtype: str, mixing: str, system=None, participation=None) -> dict:
    """What identifies a run for resuming: everything that changes its numbers except ``steps`` (a resumed run may
    go further). JSON-normalised (non-JSON values as their ``str``), so it survives a round trip through a
    checkpoint."""
    import json

    fp = {"task": task.info | {"name": task.name}, "algorithm": {"name": algorithm.name, **algorithm.hyperparams},
          "topology": topology.describe(), "batch_size": batch_size, "seed": seed, "eval_every": eval_every,
          "faults": None if faults is None else faults._asdict(), "compute_dtype": compute_dtype, "mixing": mixing}
    if system is not None:  # (absent without a system model: older checkpoints keep matching)
        fp["system"] = system.describe()
    if participation is not None:  # (likewise)
        from simdl.participation import describe

        fp["participation"] = describe(participation)
    return json.loads(json.dumps(fp, default=str))


def fingerprint_difference(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: saved != current`` for every leaf where two fingerprints differ (dotted keys)."""
    out = []
    for k in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += fingerprint_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} != {b!r}")
    return out


class Checkpoint(Hook):
    """Writes an orbax checkpoint of the loop (state, every run's history and counters, diverged steps, the runs'
    fingerprints) every ``every`` steps and at the end, and with ``resume=True`` restores the latest one in
    ``directory`` before the first chunk. Checkpoints are written atomically: a killed run leaves the previous one.

    Raises:
      ValueError: (on resume) the checkpoint holds a run whose fingerprint differs from the loop's (the message
        names the first differences), or another number of runs.
    """

    def __init__(self, directory, every: int, resume: bool = False, keep: int = 2):
        self.directory, self.every, self.resume, self.keep = directory, int(every), bool(resume), keep
        self.manager = None

    def on_start(self, loop):
        import orbax.checkpoint as ocp

        self.manager = ocp.CheckpointManager(Path(self.directory).absolute(),
                                             options=ocp.CheckpointManagerOptions(max_to_keep=self.keep))
        if not self.resume or self.manager.latest_step() is None:
            return None
        step = self.manager.latest_step()
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, loop.state)
        r = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                               meta=ocp.args.JsonRestore()))
        meta = r["meta"]
        runs = meta["runs"] if "runs" in meta else [meta]  # (single-run checkpoints of earlier versions)
        saved = [run.get("fingerprint") for run in runs]
        if len(runs) != len(loop.fingerprints):
            raise ValueError(f"checkpoint_dir {self.directory} holds {len(runs)} runs, this is {len(loop.fingerprints)}"
                             "; resume with the same config or use another checkpoint_dir")
        diff = [d for s, c in zip(saved, loop.fingerprints, strict=True) if s is not None
                for d in fingerprint_difference(s, c)]
        if diff:
            raise ValueError(f"checkpoint_dir {self.directory} holds a different run (checkpoint != this run): "
                             f"{'; '.join(diff[:5])}; resume with the same config or use another checkpoint_dir")
        state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(loop.state),
                                             jax.tree_util.tree_leaves(r["state"]))
        return Resume(int(step), state, [Recorder(run["history"], run["totals"]) for run in runs],
                      [run.get("diverged_at") for run in runs])

    def on_evaluation(self, loop, rows):
        if loop.done % self.every and loop.done != loop.steps:
            return
        import orbax.checkpoint as ocp

        runs = [rec.meta() | {"fingerprint": fp, "diverged_at": d}
                for rec, fp, d in zip(loop.recorders, loop.fingerprints, loop.diverged, strict=True)]
        self.manager.save(loop.done, args=ocp.args.Composite(state=ocp.args.StandardSave(loop.state),
                                                             meta=ocp.args.JsonSave({"runs": runs})))
        self.manager.wait_until_finished()

    def close(self):
        if self.manager is not None:
            self.manager.close()
