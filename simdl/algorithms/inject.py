"""Hyperparameters as traced state, in the manner of ``optax.inject_hyperparams``: an algorithm built once whose
numeric hyperparameters (a learning rate, a momentum, ...) live in its state, so R runs that differ only in them are
one compiled program vmapped over (state, keys, data)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from simdl.algorithms.base import Algorithm


class InjectHyperparamsState(NamedTuple):
    """State of an algorithm made by :func:`inject_hyperparams`.

    Attributes:
      hyperparams: name -> float32 scalar (a run axis in front under a batched run).
      inner_state: the state of ``algorithm_fn(hyperparams)``.
    """

    hyperparams: dict
    inner_state: Any


def _check_values(hyperparams: Mapping) -> dict:
    out = {}
    for k, v in hyperparams.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"hyperparameter {k}: {v!r}, expected a number (it becomes a traced float32 scalar)")
        if not np.isfinite(float(v)):
            raise ValueError(f"hyperparameter {k}: {v!r}, expected a finite number")
        out[str(k)] = float(v)
    return out


def inject_hyperparams(algorithm_fn: Callable[[Mapping[str, Any]], Algorithm]) -> Callable[..., Algorithm]:
    """Turn an algorithm factory into one whose numeric hyperparameters are part of the state.

    ``algorithm_fn(hp) -> Algorithm`` receives a mapping of names to numbers: Python floats when the run is built
    (so the factory's own checks run on concrete values, e.g. a negative learning rate is refused) and float32
    scalars, possibly traced, inside the compiled program. Every value must therefore work as a traced number: pass
    a learning rate as a schedule, ``lambda t: hp["learning_rate"]``.

    Returns ``factory(**hyperparams) -> Algorithm``. The algorithm's ``init`` stores the values in an
    :class:`InjectHyperparamsState`; ``step``, ``query`` and ``params`` rebuild the inner algorithm from
    ``state.hyperparams``, never from the values given to the factory. Algorithms made from one
    ``inject_hyperparams(algorithm_fn)`` with different values therefore have the same step: states initialised
    with different values can be stacked and stepped by one vmapped program (:func:`simdl.simulate_batch`).
    ``hyperparams`` of the result is the inner algorithm's record with the injected values (as floats) on top.

    Raises:
      ValueError: a value that is not a finite number (a bool, a string, NaN); anything ``algorithm_fn`` raises
        for the values.
    """

    def factory(**hyperparams) -> Algorithm:
        values = _check_values(hyperparams)
        template = algorithm_fn(values)

        def init(params, ctx):
            hp = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
            return InjectHyperparamsState(hp, template.init(params, ctx))

        def step(state, grads, ctx):
            inner, aux = algorithm_fn(state.hyperparams).step(state.inner_state, grads, ctx)
            return InjectHyperparamsState(state.hyperparams, inner), aux

        def query(state):
            return algorithm_fn(state.hyperparams).query(state.inner_state)

        def params(state):
            return algorithm_fn(state.hyperparams).params(state.inner_state)

        return template._replace(init=init, step=step, query=query, params=params,
                                 hyperparams={**template.hyperparams, **values})

    return factory
