"""``regsl``: regularized self-labeling (Li & Zhang 2021) tuned by a search method.

The authors' method is layer-wise Frobenius distance constraints (``layerwise``) plus
self-labeling (label correction and loss reweighting, ``bench.worker.selflabel``), with the
constraint radii tuned by Optuna: the backbone's radius D and the head's D_head, with the
scale factor g = 1 and Adam at a fixed learning rate of 1e-4. Here any search method plugin
(``search``: grid, random, tpe, ...) tunes, by default, the two radii and the learning rate
(``tune``: the harness's loop is SGD with momentum, for which the authors' Adam learning rate
has no meaning, so it is searched over the task's range; scale stays 1 unless tuned), and
the reweighting temperature T only with ``tune_temperature = true``; a search taking
``trials`` gets 20 unless set (TPE needs about that many; the authors ran 20 hyperopt
evaluations for MARS-SP's radii). Every trial trains with the constraints and
self-labeling. The other self-labeling options are the task's ``self_labeling`` table if it
has one, else the authors' defaults.

It is a method rather than a regularizer family so that one suite runs it on the same
(noisy) tasks as L2-SP's grid search and the learned methods: the task's own regularizer
is not used by it. Options other than ``search`` and ``tune_temperature`` go to the search
method, e.g. ``[methods.tpe-regsl] method = "regsl", search = "tpe", trials = 12``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from bench.contract.errors import BenchError
from bench.contract.method import Context, FitData, Fitted, Method, Report, Result
from bench.contract.options import require_bool
from bench.contract.plugins import build_method, method_class
from bench.zoo.regularizers import LayerwiseConstraint
from bench.zoo.selflabel_config import SelfLabelingConfig

TEMPERATURE = next(p for p in SelfLabelingConfig.SPACE if p.name == "temperature")


TUNABLE = ("lr", "D", "scale", "D_head")  # in the space's order; T: tune_temperature
FIXED = {"scale": 1.0}  # the authors' scale factor; D and D_head: LayerwiseConstraint's
DEFAULT_TRIALS = 20


class RegularizedSelfLabeling(Method):
    """Regularized self-labeling (Li & Zhang 2021): layer-wise constraints plus label correction and reweighting, radii tuned by a search method (``search``, default tpe)."""

    name = "regsl"

    def __init__(self, search: str = "tpe", tune: tuple[str, ...] = ("lr", "D", "D_head"),
                 tune_temperature: bool = False, **search_options: Any) -> None:
        self.search = search
        self.tune = tune
        self.tune_temperature = tune_temperature
        self.search_options = search_options
        for key, value in search_options.items():  # stored as given, each its own attribute
            setattr(self, key, value)

    def _search(self) -> Method:
        """The search method (built once; it holds the search's state)."""
        if getattr(self, "search_", None) is None:
            if not isinstance(self.search, str) or self.search == self.name:
                raise BenchError(f"regsl: search must name a search method plugin, "
                                 f"got {self.search!r}")
            options = dict(self.search_options)
            if "trials" not in options and "trials" in inspect.signature(
                    method_class(self.search)).parameters:
                options["trials"] = DEFAULT_TRIALS
            method = build_method(self.search, options)
            if not method.uses_validation:
                raise BenchError(f"regsl: search = {self.search!r} is not a search method "
                                 f"(it learns its hyperparameters without a validation split)")
            self.search_ = method
        return self.search_

    # the harness asks these of the method; they are the search method's
    @property
    def uses_validation(self) -> bool:  # type: ignore[override]
        return True

    @property
    def reports_validation(self) -> bool:  # type: ignore[override]
        return self._search().reports_validation

    @property
    def retrain_all(self) -> bool:  # type: ignore[override]
        return self._search().retrain_all

    def start(self, context: Context) -> None:
        require_bool("tune_temperature", self.tune_temperature)
        tune = self.tune
        if not (isinstance(tune, (list, tuple)) and tune and set(tune) <= set(TUNABLE)
                and len(set(tune)) == len(tune)):
            raise BenchError(f"regsl: tune must be a non-empty list of distinct names among "
                             f"{', '.join(TUNABLE)}, got {tune!r}")
        if "lr" not in tune:  # SGD's learning rate has no authors' value to fix it at
            raise BenchError("regsl: tune must include lr (the harness trains with SGD, "
                             "whose learning rate the authors' Adam setting does not give)")
        if context.discrete:
            raise BenchError("regsl cannot be replayed: recorded runs do not span its space")
        lr = next(p for p in context.space if p.name == "lr")  # the task's lr range
        space = tuple(p for p in (lr, *LayerwiseConstraint.space) if p.name in tune) + (
            (TEMPERATURE,) if self.tune_temperature else ())
        super().start(context)
        self.space_ = space
        self._search().start(dataclasses.replace(context, space=space))

    def searched_space(self):
        return self.space_

    def suggest(self, trial_id: str):
        return self._search().suggest(trial_id)

    def on_report(self, trial_id: str, step: int, metrics: dict[str, float]) -> bool:
        return self._search().on_report(trial_id, step, metrics)

    def on_result(self, result: Result) -> None:
        self._search().on_result(result)

    def fit(self, data: FitData, config: dict[str, float], report: Report) -> Fitted:
        from bench.worker.fit import standard_fit  # worker side only: imports torch
        from bench.zoo.regularizers import make_regularizer
        from bench.worker.selflabel import SelfLabeling

        radii = {p.name: config.get(p.name, FIXED.get(p.name, getattr(LayerwiseConstraint,
                                                                          p.name)))
                 for p in LayerwiseConstraint.space}
        base = data.task.self_labeling or SelfLabelingConfig()
        hook = SelfLabeling(base.with_values(config))
        return standard_fit(data, config, report, self.reports_validation,
                            regularizer=make_regularizer(LayerwiseConstraint.name, **radii),
                            hooks=[hook])
