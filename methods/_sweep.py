"""What every learned-hyperparameter method shares: a learning-rate sweep of runs on all N
(no validation split), the incumbent by the method's own objective, and the regularizer
families its prior models.

A learned method reads a regularizer family as a Gaussian prior: ``l2sp`` is
w_bb ~ N(mu0, .), w_head ~ N(0, .); ``wd`` (weight decay) is the same prior centred at 0
everywhere. Any other family (MARS-SP, layer-wise constraints) is a projection, not a
prior: pairing it with a learned method would compare different regularizers under one
name, so ``start`` refuses it unless ``allow_regularizer_mismatch = true`` says the
mismatch is intended (the method then learns its L2-SP prior anyway).
"""

from __future__ import annotations

import math
from typing import ClassVar

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Context, Method, Result
from bench.contract.options import require_bool, require_positives

PRIOR_FAMILIES = ("l2sp", "wd")


class LearnedMethod(Method):
    """Base of the learned methods: runs ``lrs`` in order, one per trial, and keeps the
    run with the lowest objective (``best_``). Subclasses check their own options in
    ``check_options`` and train in ``fit``."""

    uses_validation: ClassVar[bool] = False
    #: regularizer families whose prior the method learns
    models: ClassVar[tuple[str, ...]] = PRIOR_FAMILIES

    lrs: tuple[float, ...]
    allow_regularizer_mismatch: bool = False

    def check_options(self) -> None:
        """Raise BenchError for a bad option (called by ``start`` and ``fit``)."""

    def start(self, context: Context) -> None:
        require_positives("lrs", self.lrs)
        require_bool("allow_regularizer_mismatch", self.allow_regularizer_mismatch)
        family = context.task.regularizer
        if family not in self.models and not self.allow_regularizer_mismatch:
            raise BenchError(
                f"{self.name} learns a Gaussian prior ({' or '.join(self.models)}) but task "
                f"{context.task.name} regularizes with {family!r}; use one of those, or set "
                f"allow_regularizer_mismatch = true if comparing them is intended")
        if getattr(context.task, "self_labeling", None) is not None:
            raise BenchError(f"{self.name} does not train with self-labeling, which task "
                             f"{context.task.name} sets; run it on the task without it")
        self.check_options()
        super().start(context)
        self.pending_ = [float(lr) for lr in self.lrs]
        self.best_: dict | None = None

    def suggest(self, trial_id: str):
        if not self.pending_:
            return FINISHED
        return {"lr": self.pending_.pop(0)}

    def on_result(self, result: Result) -> None:
        if result.status == S.OK and result.score is not None and math.isfinite(result.score) \
                and (self.best_ is None or result.score < self.best_["objective"]):
            self.best_ = {"trial_id": result.trial_id, "lr": result.config.get("lr"),
                          "objective": float(result.score)}


def centred_at_pretrained(family: str) -> bool:
    """Whether the backbone's prior mean is its pretrained value (L2-SP) or 0 (WD)."""
    return family != "wd"
