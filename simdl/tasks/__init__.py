"""Loss/gradient oracles: datasets + models + partitions, and synthetic problems."""

from simdl.tasks.base import Task
from simdl.tasks.classification import classification
from simdl.tasks.quadratics import quadratics, random_quadratics

__all__ = ["Task", "classification", "quadratics", "random_quadratics"]
