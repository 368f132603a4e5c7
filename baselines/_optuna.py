"""What the Optuna-based methods share: a seeded, named study driven through ask-and-tell
over the task's space, and pruning on the per-epoch validation NLL the harness reports,
made independent of the order parallel trials report in.

Pruning follows the harness's lag rule for results: a decision about a trial sees that
trial and the trials whose results the method had heard when it was suggested, nothing
that ran beside it (``heard_study``). Optuna's pruners keep their state in the study's
trials, so the same seed prunes the same trials on one worker or many.
"""

from __future__ import annotations

import math

import optuna

from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Context, Method, Result
from bench.contract.options import require_int
from bench.contract.schema import OK, PRUNED


class OptunaSearch(Method):
    """Optuna's ask-and-tell over the task's space; subclasses give the sampler (and a
    pruner). In a replay's discrete space each parameter is a categorical of its grid."""

    def __init__(self, trials: int = 20) -> None:
        self.trials = trials

    def _sampler(self) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    def _distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.name: optuna.distributions.CategoricalDistribution(p.grid)
                if self.context_.discrete
                else optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
                for p in self.context_.space}

    def _config(self, trial: optuna.trial.Trial) -> dict[str, float]:
        """The configuration a study trial stands for."""
        return dict(trial.params)

    def start(self, context: Context) -> None:
        require_int("trials", self.trials, 1)
        super().start(context)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # a fixed name: Hyperband assigns brackets by hashing it with the trial number
        self.study_ = optuna.create_study(study_name=f"{self.name}-seed{context.seed}",
                                          direction="minimize", sampler=self._sampler(),
                                          pruner=self._pruner())
        self.distributions_ = self._distributions()
        self.running_: dict[str, optuna.trial.Trial] = {}
        self.asked_ = 0

    def suggest(self, trial_id: str):
        if self.asked_ >= self.trials:
            return FINISHED
        self.asked_ += 1
        trial = self.study_.ask(self.distributions_)
        self.running_[trial_id] = trial
        return self._config(trial)

    def on_result(self, result: Result) -> None:
        trial = self.running_.pop(result.trial_id, None)
        if trial is None:
            return
        if result.status == OK and result.score is not None:
            self.study_.tell(trial, result.score)
        elif result.status == PRUNED:
            self.study_.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study_.tell(trial, state=optuna.trial.TrialState.FAIL)


class _HeardStorage:
    """A study's storage that lists only the trials numbered in ``numbers``; everything
    else (writing a pruner's rung values into a trial, ...) goes to the storage itself."""

    def __init__(self, storage, numbers: frozenset[int]) -> None:
        self._storage, self._numbers = storage, numbers

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None):
        return [t for t in self._storage.get_all_trials(study_id, deepcopy=deepcopy,
                                                        states=states)
                if t.number in self._numbers]

    def __getattr__(self, name: str):
        return getattr(self._storage, name)


def heard_study(study: optuna.Study, numbers: frozenset[int]) -> optuna.Study:
    """``study`` as one pruning decision sees it: only the trials in ``numbers``. A real
    Study over a filtered storage, so pruners that wrap it again (Hyperband's per-bracket
    studies) still see only those trials."""
    return optuna.Study(study_name=study.study_name,
                        storage=_HeardStorage(study._storage, numbers),  # noqa: SLF001
                        sampler=study.sampler, pruner=study.pruner)


class PruningSearch(OptunaSearch):
    """An Optuna search whose pruner stops trials on their per-epoch validation NLL.

    A trial is compared only with the trials heard before it was suggested, and the
    pruner keeps no state outside the study's trials, so the same seed prunes the same
    trials whatever order parallel trials report in."""

    reports_validation = True

    def start(self, context: Context) -> None:
        super().start(context)
        self.visible_: dict[str, frozenset[int]] = {}

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if isinstance(config, dict):  # heard = told, so finished in the study
            heard = {t.number for t in self.study_.get_trials(deepcopy=False)
                     if t.state.is_finished()}
            self.visible_[trial_id] = frozenset(heard | {self.running_[trial_id].number})
        return config

    def _resource(self, trial_id: str, step: int) -> int | None:
        """The pruner's resource at this report (None: no decision here)."""
        return step

    def on_report(self, trial_id: str, step: int, metrics: dict[str, float]) -> bool:
        trial = self.running_.get(trial_id)
        if trial is None:
            return False
        resource = self._resource(trial_id, step)
        if resource is None or "val_nll" not in metrics:
            return False
        trial.report(metrics["val_nll"], resource)
        view = heard_study(self.study_, self.visible_[trial_id])
        frozen = next(t for t in view.get_trials(deepcopy=False) if t.number == trial.number)
        return self.study_.pruner.prune(view, frozen)


def task_epochs(task) -> int | None:
    """How many evaluation reports a full search trial of ``task`` makes: one per epoch of
    its train split (one at the last step if that ends mid-epoch). A replayed task knows
    it from its records (None: they hold no per-epoch reports)."""
    if hasattr(task, "epochs"):  # a replay's RecordedTask
        return task.epochs
    from bench.zoo.task import VAL_FRACTION  # loaded already wherever a Task exists

    n_train = task.n - max(1, round(VAL_FRACTION * task.n))  # as bench.zoo.data.stratified_split
    per_epoch = math.ceil(n_train / task.batch_size)
    return math.ceil(task.steps / per_epoch)


SAMPLERS = ("random", "tpe")


class EpochPruningSearch(PruningSearch):
    """A pruning search whose resource is the epoch: a trial's k-th report is epoch k, out
    of the task's ``task_epochs``. A trial at its last report has trained to the end and is
    never stopped there (its result is complete). Sampler: random (the papers') or TPE.
    On a task without per-epoch reports (a replay of records that have none, which
    ``bench replay`` refuses for pruning methods) nothing is pruned."""

    def __init__(self, trials: int = 30, sampler: str = "random",
                 startup_trials: int = 5) -> None:
        super().__init__(trials)
        self.sampler = sampler
        self.startup_trials = startup_trials

    def start(self, context: Context) -> None:
        if self.sampler not in SAMPLERS:
            raise BenchError(f"unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        require_int("startup_trials", self.startup_trials, 0)
        self.epochs_ = task_epochs(context.task)
        super().start(context)
        self.reports_: dict[str, int] = {}

    def _sampler(self) -> optuna.samplers.BaseSampler:
        seed = self.context_.seed
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.startup_trials,
                                          constant_liar=self.context_.workers > 1)

    def _pruner(self) -> optuna.pruners.BasePruner:
        return self._epoch_pruner() if self.epochs_ else optuna.pruners.NopPruner()

    def _epoch_pruner(self) -> optuna.pruners.BasePruner:
        raise NotImplementedError

    def _resource(self, trial_id: str, step: int) -> int | None:
        epoch = self.reports_[trial_id] = self.reports_.get(trial_id, 0) + 1
        return epoch if self.epochs_ and epoch < self.epochs_ else None
