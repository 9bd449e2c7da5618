"""Image/feature classification split over workers: dataset + Flax model + partition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simdl.tasks.base import Task

PARTITIONS = ("iid", "dirichlet", "shards", "natural")
#: ``worker_eval_samples="auto"``: each worker's own model is evaluated on ``max(WORKER_EVAL_MIN,
#: WORKER_EVAL_BUDGET // n)`` test samples (at most the test set), so one evaluation of all n workers costs about
#: ``max(WORKER_EVAL_BUDGET, WORKER_EVAL_MIN · n)`` one-sample forward passes (a training step: ``≈ 3 · n · B``).
WORKER_EVAL_BUDGET = 6144
WORKER_EVAL_MIN = 64
#: samples per forward pass when workers' own models are evaluated together (groups of workers on accelerators and
#: for dense models; one worker at a time for convolutional models on CPU): bounds evaluation memory whatever n.
EVAL_PASS_SAMPLES = 8192


def worker_eval_size(worker_eval_samples, n_workers: int, n_test: int) -> int:
    """Test samples per worker for the workers' own models (see :data:`WORKER_EVAL_BUDGET`); ``None`` = all.

    Raises:
      ValueError: not ``"auto"``, ``None`` or a positive int.
    """
    if worker_eval_samples is None or worker_eval_samples == "all":
        return n_test
    if worker_eval_samples == "auto":
        return min(n_test, max(WORKER_EVAL_MIN, WORKER_EVAL_BUDGET // n_workers))
    if isinstance(worker_eval_samples, bool) or not isinstance(worker_eval_samples, (int, np.integer)) \
            or worker_eval_samples < 1:
        raise ValueError(f"worker_eval_samples must be 'auto', 'all' (or None) or a positive int, got "
                         f"{worker_eval_samples!r}")
    return min(n_test, int(worker_eval_samples))


def worker_eval_group(stacked_params, eval_batch_size: int) -> int:
    """Workers evaluated per pass: 1 where per-worker execution resolves to ``"map"`` (convolutions on CPU), else
    ``EVAL_PASS_SAMPLES // eval_batch_size`` (at least 1)."""
    from simdl.models.batched import resolve_strategy

    if resolve_strategy("auto", stacked_params) == "map":
        return 1
    return max(1, EVAL_PASS_SAMPLES // eval_batch_size)


def floating_dtype(params, default=jnp.float32):
    """The dtype of the first floating-point leaf of ``params`` (the model's compute dtype), else ``default``."""
    for leaf in jax.tree_util.tree_leaves(params):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.result_type(leaf)
    return jnp.dtype(default)


def _epoch_indices(key, step, shard_size: int, batch_size: int):
    """Positions in a worker's shard for minibatch ``step``: epochs of a fresh seeded permutation, without
    replacement inside an epoch (a batch may straddle two epochs)."""
    pos = step * batch_size + jnp.arange(batch_size)
    epoch0 = (step * batch_size) // shard_size
    epoch = pos // shard_size
    within = pos % shard_size
    p0 = jax.random.permutation(jax.random.fold_in(key, epoch0), shard_size)
    p1 = jax.random.permutation(jax.random.fold_in(key, epoch0 + 1), shard_size)
    return jnp.where(epoch == epoch0, p0[within], p1[within])


def classification(
    dataset: str = "digits",
    model: str = "mlp",
    n_workers: int = 16,
    partition: str = "dirichlet",
    alpha: float = 0.1,
    classes_per_worker: int = 2,
    seed: int = 0,
    augment: bool | None = None,
    eval_batch_size: int = 1000,
    max_eval_samples: int | None = 10_000,
    worker_eval_samples: int | str | None = "auto",
    train_eval_samples: int | str | None = 1024,
    model_kwargs: dict | None = None,
    dataset_kwargs: dict | None = None,
    data=None,
    validation: float = 0.0,
) -> Task:
    """Softmax cross-entropy classification, each worker holding its own shard of the training set.

    Args:
      dataset: ``"digits"`` (embedded scikit-learn handwritten digits, 8×8×1, 10 classes; the default, offline) or a
        tensorflow-datasets name (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``emnist``; needs
        ``simdl[tfds]``), see :func:`simdl.data.load_dataset`.
      model: a name from :data:`simdl.models.MODELS` (``mlp``, ``cnn``, ``lenet5``, ``resnet20``, ``vgg11``, ...).
      n_workers: number of workers n ≥ 1.
      partition: ``"iid"``, ``"dirichlet"`` (docs/algorithms.md#dirichlet-partition, concentration ``alpha``),
        ``"shards"``
        (``classes_per_worker`` classes per worker), or ``"natural"`` with ``dataset="synthetic"``: the FedProx
        Synthetic(α, β) data (arXiv 1812.06127), each worker with its own generating model (``dataset_kwargs``:
        ``alpha``, ``beta``, ``samples_per_worker``, ...; use ``model="logreg"``).
      alpha: Dirichlet α > 0 (smaller = more heterogeneous; 0.01 ≈ 1–2 classes per worker, 10 ≈ IID).
      classes_per_worker: k for ``"shards"``.
      seed: seed of the partition (the model init and data order use the seed given to ``simulate``).
      augment: random crop (4-pixel padding) + horizontal flip per worker on device; default on for CIFAR.
      eval_batch_size: test examples per forward pass during evaluation.
      max_eval_samples: evaluate the averaged model x̄ on at most this many test samples; ``None`` = all.
      train_eval_samples: the training objective at x̄ (``avg_model_loss``) is evaluated on a fixed seeded uniform
        subset of this many of the workers' training samples (all workers' shards, so it is unbiased under
        heterogeneous splits); ``"all"`` or ``None`` = every sample of every shard.
      worker_eval_samples: test samples on which every worker's own model is evaluated (``worker_accuracy_mean`` /
        ``_min``): ``"auto"`` (default) ``min(max_eval_samples, max(64, 6144 // n))``, a fixed seeded subset of
        the test set, the same at every evaluation; an int; or ``"all"``/``None`` = the same samples as x̄. Workers are
        evaluated in groups (one worker at a time for convolutional models on CPU), so memory is bounded
        whatever n and the test-set size. ``info["evaluation"]`` records what was evaluated.
      model_kwargs / dataset_kwargs: passed to the model constructor / the dataset loader.
      data: an already loaded :class:`simdl.data.Dataset` (skips loading).
      validation: fraction in [0, 1) of the training set held out (seeded by ``seed``) before partitioning and used
        instead of the test set for every evaluation metric (for learning-rate tuning, ``simdl tune``).

    Returns:
      A :class:`Task`. Every worker holds exactly ``N // n`` training samples; inputs are stored as given (uint8
      for images) and normalised on device per batch. ``evaluate`` reports ``avg_model_loss`` (training objective at
      x̄), ``avg_model_test_loss``, ``avg_model_accuracy`` (test accuracy of x̄), ``worker_accuracy_mean`` and
      ``worker_accuracy_min`` (test accuracy of each worker's own model), and per worker ``worker_accuracy`` and
      ``worker_test_loss`` (float ``(n,)`` each; the history keeps them as ``(evaluations, n)`` arrays).

    Raises:
      ValueError: unknown dataset / model / partition names (listing valid ones), α ≤ 0, k > number of classes,
        more workers than samples.
    """
    from simdl.data import load_dataset
    from simdl.data.partition import partition as make_partition
    from simdl.models import get_model
    from simdl.models.batched import per_worker_apply

    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; valid: {', '.join(PARTITIONS)}")
    if (model_kwargs or {}).get("norm") == "batch":
        raise ValueError("norm='batch' (BatchNorm) is not supported by the runner yet: its running statistics would "
                         "need per-worker mutable state; use norm='group' or 'evonorm' (as the RelaySGD and QGM "
                         "papers do)")
    if (dataset == "synthetic") != (partition == "natural") and data is None:
        raise ValueError(f"dataset 'synthetic' (FedProx Synthetic(α, β)) comes with its own per-worker split: use "
                         f"partition='natural' with it and only with it (got dataset={dataset!r}, "
                         f"partition={partition!r})")
    if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    natural = None
    if dataset == "synthetic" and data is None:
        from simdl.data.synthetic import synthetic_fedprox

        kw = {"alpha": 1.0, "beta": 1.0, **(dataset_kwargs or {})}
        sd = synthetic_fedprox(n_workers, seed=seed, **kw)
        ds, natural = sd.dataset, np.asarray(sd.indices)
    else:
        ds = data if data is not None else load_dataset(dataset, **(dataset_kwargs or {}))
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}")
    if validation and natural is not None:
        raise ValueError("validation is not available with partition='natural' (the split is the generator's)")
    if validation:
        order = np.random.default_rng([seed, 7]).permutation(len(ds.y_train))
        k = int(round(validation * len(order)))
        held, kept = order[:k], np.sort(order[k:])
        ds = ds._replace(x_test=ds.x_train[held], y_test=ds.y_train[held], x_train=ds.x_train[kept],
                         y_train=ds.y_train[kept])
    net = get_model(model, ds.num_classes, **(model_kwargs or {}))
    if natural is not None:
        indices = natural
    else:
        indices = make_partition(partition, ds.y_train, n_workers, alpha=alpha, k=classes_per_worker, seed=seed)
    n, shard = indices.shape
    if augment is None:
        augment = ds.name.startswith("cifar")
    scale, mean, std = float(ds.scale), np.asarray(ds.mean, np.float32), np.asarray(ds.std, np.float32)
    n_test = len(ds.y_test) if max_eval_samples is None else min(len(ds.y_test), max_eval_samples)
    n_worker_test = worker_eval_size(worker_eval_samples, n, n_test)
    worker_test_idx = np.sort(np.random.default_rng([seed, 11]).permutation(n_test)[:n_worker_test])
    pool = indices.reshape(-1)
    if train_eval_samples not in (None, "all"):
        if isinstance(train_eval_samples, bool) or not isinstance(train_eval_samples, (int, np.integer)) \
                or train_eval_samples < 1:
            raise ValueError(f"train_eval_samples must be a positive int or 'all' (or None), got "
                             f"{train_eval_samples!r}")
        keep = np.random.default_rng([seed, 13]).permutation(len(pool))[: int(train_eval_samples)]
        pool = pool[np.sort(keep)]
    train_eval_idx = pool

    def pad_to_batches(x, y):
        m = len(y)
        bs = min(eval_batch_size, m)
        nb = -(-m // bs)
        pad = nb * bs - m
        xs = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((nb, bs) + x.shape[1:])
        ys = np.concatenate([y, np.zeros(pad, y.dtype)]).reshape(nb, bs)
        mask = np.concatenate([np.ones(m, np.float32), np.zeros(pad, np.float32)]).reshape(nb, bs)
        return jnp.asarray(xs), jnp.asarray(ys, jnp.int32), jnp.asarray(mask)

    test_x, test_y, test_m = pad_to_batches(ds.x_test[:n_test], ds.y_test[:n_test])
    tr_x, tr_y, tr_m = pad_to_batches(ds.x_train[train_eval_idx], ds.y_train[train_eval_idx])
    worker_test = pad_to_batches(ds.x_test[worker_test_idx], ds.y_test[worker_test_idx])
    data_tree = {
        "x": jnp.asarray(ds.x_train),
        "y": jnp.asarray(ds.y_train, jnp.int32),
        "indices": jnp.asarray(indices, jnp.int32),
        "test": (test_x, test_y, test_m),
        "train_eval": (tr_x, tr_y, tr_m),
        "worker_test": worker_test,
    }
    sample_shape = ds.x_train.shape[1:]

    def normalise(x, dtype=jnp.float32):  # in float32, then cast to the compute dtype
        return ((x.astype(jnp.float32) / scale - mean) / std).astype(dtype)

    def init_params(key):
        return net.init(key, jnp.zeros((1,) + sample_shape, jnp.float32))

    def logits_fn(params, x):  # computes in the params' dtype (bfloat16 under simulate(compute_dtype="bfloat16"))
        return net.apply(params, normalise(x, floating_dtype(params)))

    def sample(data, key, worker, step, batch_size):
        pos = _epoch_indices(key, step, shard, batch_size)
        idx = data["indices"][worker, pos]
        x = data["x"][idx]
        if augment:
            from simdl.data.augment import random_crop_flip

            x = random_crop_flip(jax.random.fold_in(jax.random.fold_in(key, step), 1 << 30), x, pad=4)
        return {"x": x, "y": data["y"][idx]}

    def loss(params, batch):
        logits = logits_fn(params, batch["x"]).astype(jnp.float32)  # cross-entropy in float32 in any compute dtype
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))

    def _scan_eval(params, split):
        xs, ys, ms = split

        def body(acc, b):
            x, y, m = b
            logits = logits_fn(params, x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            return (acc[0] + jnp.sum(ce * m), acc[1] + jnp.sum(correct * m)), None

        (ce, correct), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), (xs, ys, ms))
        total = jnp.sum(ms)
        return ce / total, correct / total

    def evaluate(data, stacked):
        xbar = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), stacked)
        test_loss, test_acc = _scan_eval(xbar, data["test"])
        train_loss, _ = _scan_eval(xbar, data["train_eval"])
        group = worker_eval_group(stacked, worker_test[0].shape[1])
        strategy = "vmap" if group >= n else "map"
        worker_loss, worker_acc = per_worker_apply(lambda p: _scan_eval(p, data["worker_test"]), strategy,
                                                   None if strategy == "vmap" else group)(stacked)
        return {
            "avg_model_loss": train_loss,
            "avg_model_test_loss": test_loss,
            "avg_model_accuracy": test_acc,
            "worker_accuracy_mean": jnp.mean(worker_acc),
            "worker_accuracy_min": jnp.min(worker_acc),
            "worker_accuracy": worker_acc,  # (n,): the history keeps it as (evaluations, n)
            "worker_test_loss": worker_loss,
        }

    info = {"dataset": ds.name, "model": model, "n_workers": n, "partition": partition, "shard_size": shard,
            "alpha": alpha if partition == "dirichlet" else None,
            "classes_per_worker": classes_per_worker if partition == "shards" else None,
            "partition_seed": seed, "augment": bool(augment), "num_classes": ds.num_classes,
            "evaluated_on": "validation" if validation else "test",
            "conv_impl": getattr(net, "conv_impl", None),
            "evaluation": {"avg_model_test_samples": n_test, "avg_model_train_samples": int(len(train_eval_idx)),
                           "worker_test_samples": n_worker_test, "workers_evaluated": n,
                           "worker_test_subset": "all" if n_worker_test == n_test else f"seeded subset of "
                                                 f"{n_worker_test} of the {n_test} evaluated test samples"}}
    return Task(f"{ds.name}/{model}", n, data_tree, init_params, loss, sample, evaluate, shard,
                np.full(n, 1.0 / n), info, "classification")
