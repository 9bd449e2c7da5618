"""Loss/gradient oracles: datasets + models + partitions, and synthetic problems."""

from simdl.tasks.base import Task
from simdl.tasks.classification import classification
from simdl.tasks.mean_estimation import mean_estimation
from simdl.tasks.quadratics import quadratics, random_quadratics

__all__ = ["Task", "classification", "mean_estimation", "quadratics", "random_quadratics"]
