"""Decentralized training algorithms as pure ``init``/``step`` functions over stacked state.

Every factory takes ``learning_rate`` (float or optax schedule); those with local momentum take ``momentum`` (β)
and ``nesterov``; all other hyperparameters are keywords with the papers' defaults.
"""

from simdl.algorithms.averaging import allreduce, local_sgd, model_averaging_clr
from simdl.algorithms.base import Algorithm, Context
from simdl.algorithms.gossip import cdmsgd, cdsgd, dpsgd, dsgd
from simdl.algorithms.local import local_optimizer

ALGORITHMS = {
    "dsgd": dsgd,
    "dpsgd": dpsgd,
    "cdsgd": cdsgd,
    "cdmsgd": cdmsgd,
    "allreduce": allreduce,
    "local_sgd": local_sgd,
    "model_averaging_clr": model_averaging_clr,
}


def get(name: str, **kwargs) -> Algorithm:
    """Build the algorithm ``name`` with keyword hyperparameters.

    Raises:
      ValueError: unknown name (the message lists the valid ones) or an unknown/invalid hyperparameter.
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}")
    try:
        return ALGORITHMS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad hyperparameters for {name}: {e}") from None


__all__ = ["ALGORITHMS", "Algorithm", "Context", "allreduce", "cdmsgd", "cdsgd", "dpsgd", "dsgd", "get",
           "local_optimizer", "local_sgd", "model_averaging_clr"]
