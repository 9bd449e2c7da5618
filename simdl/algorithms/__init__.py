"""Decentralized training algorithms as pure ``init``/``step`` functions over stacked state.

Every factory takes ``learning_rate`` (float or optax schedule); those with local momentum take ``momentum`` (β)
and ``nesterov``; all other hyperparameters are keywords with the papers' defaults.
"""

from simdl.algorithms.asynchronous import ad_psgd, randomized_gossip
from simdl.algorithms.averaging import allreduce, local_sgd, model_averaging_clr
from simdl.algorithms.base import Algorithm, Context
from simdl.algorithms.choco import choco_sgd
from simdl.algorithms.d2 import d2, exact_diffusion
from simdl.algorithms.dynamic import dynamic_averaging
from simdl.algorithms.federated import fedavg, fedprox, scaffold
from simdl.algorithms.gossip import cdmsgd, cdsgd, dpsgd, dsgd
from simdl.algorithms.inject import InjectHyperparamsState, inject_hyperparams
from simdl.algorithms.local import local_optimizer
from simdl.algorithms.qgm import qg_adam, qg_dsgdm
from simdl.algorithms.relay import relaysgd, relaysum_grad, relaysum_mix
from simdl.algorithms.sgp import sgp
from simdl.algorithms.tracking import gradient_tracking

ALGORITHMS = {
    "dsgd": dsgd,
    "dpsgd": dpsgd,
    "cdsgd": cdsgd,
    "cdmsgd": cdmsgd,
    "allreduce": allreduce,
    "local_sgd": local_sgd,
    "model_averaging_clr": model_averaging_clr,
    "dynamic_averaging": dynamic_averaging,
    "relaysgd": relaysgd,
    "relaysum_grad": relaysum_grad,
    "relaysum_mix": relaysum_mix,
    "qg_dsgdm": qg_dsgdm,
    "qg_adam": qg_adam,
    "d2": d2,
    "exact_diffusion": exact_diffusion,
    "gradient_tracking": gradient_tracking,
    "sgp": sgp,
    "choco_sgd": choco_sgd,
    "ad_psgd": ad_psgd,
    "randomized_gossip": randomized_gossip,
    "fedavg": fedavg,
    "fedprox": fedprox,
    "scaffold": scaffold,
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


__all__ = ["ALGORITHMS", "Algorithm", "Context", "InjectHyperparamsState", "get", "inject_hyperparams",
           "local_optimizer", *ALGORITHMS]
