"""Scale presets: run a paper config as written (``"full"``) or as a seconds-long smoke test (``"tiny"``).

Selected with the top-level config key ``scale`` (``simdl run configs/X.toml --set scale=tiny``). The preset is
applied after all ``--set`` overrides, so it wins over them for the keys it sets.
"""

from __future__ import annotations

import copy

from simdl.models import MODELS

SCALES = ("full", "tiny")

#: ``tiny`` settings.
TINY_TRAIN = {"steps": 4, "batch_size": 2, "eval_every": 2}
TINY_EVAL_SAMPLES = 32
TINY_TEST = 32
TINY_PER_WORKER = 8
#: ``tiny`` replaces any model without a width knob by this one (a compiled VGG-11 or ResNet-20 over 16 workers
#: takes minutes on a CPU; the smoke test is about the configs, not the models).
TINY_MODEL = "logreg"
#: Model attributes that shrink a model's width, with their ``tiny`` value (used when the model has one).
WIDTH_KNOBS = {"width": 4, "width_multiplier": 0.125, "hidden": [8]}


def _model_fields(name: str) -> set[str]:
    import dataclasses

    cls = MODELS.get(name)
    return set() if cls is None else {f.name for f in dataclasses.fields(cls) if f.init}


def _tiny_task(task: dict, n_runs_workers: int) -> dict:
    t = dict(task)
    if t.get("kind", "classification") != "classification":
        return t
    t["max_eval_samples"] = TINY_EVAL_SAMPLES
    t["eval_batch_size"] = TINY_EVAL_SAMPLES
    if t.get("dataset") == "synthetic":  # generated, not loaded: fewer samples per worker
        dk = dict(t.get("dataset_kwargs") or {})
        dk["samples_per_worker"] = TINY_PER_WORKER
        dk["test_samples_per_worker"] = max(1, TINY_TEST // n_runs_workers)
        t["dataset_kwargs"] = dk
    elif t.get("dataset", "digits") != "digits":
        dk = dict(t.get("dataset_kwargs") or {})
        dk["max_train"] = TINY_PER_WORKER * n_runs_workers
        dk["max_test"] = TINY_TEST
        dk.setdefault("stand_in", True)
        t["dataset_kwargs"] = dk
    model = t.get("model", "mlp")
    knobs = [k for k in WIDTH_KNOBS if k in _model_fields(model)]
    if knobs:
        mk = dict(t.get("model_kwargs") or {})
        mk[knobs[0]] = WIDTH_KNOBS[knobs[0]]
        t["model_kwargs"] = mk
    else:
        t["model"] = TINY_MODEL
        t.pop("model_kwargs", None)
    return t


def apply_scale(cfg: dict, scale: str | None = None) -> dict:
    """Return ``cfg`` at the given scale (default: ``cfg["scale"]``, else ``"full"``); the result records it
    in ``"scale"``.

    * ``"full"``: unchanged (the paper's settings as written in the config).
    * ``"tiny"``: a smoke test of every run of the config, same workers, topologies, algorithms and recipes:
      ``[train]`` ``steps = 4``, ``batch_size = 2``, ``eval_every = 2`` (``epochs`` dropped); classification tasks
      evaluate on ``32`` samples, load at most ``8 · n_workers`` training and ``32`` test samples from
      tensorflow-datasets (``dataset_kwargs.max_train/max_test``), or a synthetic stand-in of the same shape with
      a one-line warning when the dataset is not prepared (``dataset_kwargs.stand_in``); FedProx Synthetic(α, β)
      generates ``8`` training samples per worker (``dataset_kwargs.samples_per_worker``); and use a narrow model:
      the model's width attribute when it has one (:data:`WIDTH_KNOBS`), else :data:`TINY_MODEL`. ``[sweep]``
      grids are kept.

    Raises:
      ValueError: unknown scale (valid ones listed).
    """
    scale = cfg.get("scale", "full") if scale is None else scale
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    out = copy.deepcopy(cfg)
    out["scale"] = scale
    if scale == "full":
        return out
    train = {k: v for k, v in out.get("train", {}).items() if k != "epochs"}
    train.update(TINY_TRAIN)
    out["train"] = train
    if "task" in out:
        n = int(out["task"].get("n_workers", 16))
        out["task"] = _tiny_task(out["task"], n)
    return out
