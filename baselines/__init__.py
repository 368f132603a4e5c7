"""Search methods: each trial trains on a train split and is scored on a validation split;
the harness retrains incumbents on all data."""

from baselines._gpbo import GPBOSearch
from baselines._grid import GridSearch
from baselines._multifidelity import ASHASearch, HyperbandSearch
from baselines._random import RandomSearch
from baselines._tpe import PrunedTPESearch, TPESearch

__all__ = ["ASHASearch", "GPBOSearch", "GridSearch", "HyperbandSearch", "PrunedTPESearch",
           "RandomSearch", "TPESearch"]
