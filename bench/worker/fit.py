"""The standard fit (worker side): the shared fine-tuning loop at one configuration, with
the task's regularizer, for search trials and their retrains, in the task's ``precision``."""

from __future__ import annotations

from bench.contract.method import FitData, Fitted, Report
from bench.training.train import Evaluation, Timer, TrainConfig, fine_tune
from bench.worker.selflabel import SelfLabeling
from bench.zoo.regularizers import Regularizer, make_regularizer
from bench.zoo.selflabel_config import SelfLabelingConfig


def task_hooks(task, config: dict[str, float]) -> list:
    """Training hooks a task asks for beside its regularizer: self-labeling if it sets
    ``self_labeling`` (with the trial's values of the options its space tunes)."""
    if task.self_labeling is None:
        return []
    return [SelfLabeling(task.self_labeling.with_values(config))]


def epoch_metrics(evaluation: Evaluation) -> dict[str, float]:
    """What a method hears of an evaluation: the training loss, the validation metrics if
    any, and the hooks' per-epoch fields."""
    metrics = {"train_loss": evaluation.train_loss, "epoch": evaluation.epoch}
    if "val" in evaluation.metrics:
        metrics |= {"val_nll": evaluation.metrics["val"]["nll"],
                    "val_acc": evaluation.metrics["val"]["acc"]}
    return metrics | evaluation.fields


def standard_fit(data: FitData, config: dict[str, float], report: Report,
                 report_validation: bool, regularizer: Regularizer | None = None,
                 hooks: list | None = None) -> Fitted:
    """The shared fine-tuning loop at ``config``, reporting validation metrics per epoch
    when asked (for pruning). A method may train with its own ``regularizer`` and
    ``hooks`` instead of the task's (e.g. ``regsl``)."""
    task = data.task
    if regularizer is None:
        hp = {k: v for k, v in config.items()
              if k != "lr" and k not in SelfLabelingConfig.names()}
        regularizer = make_regularizer(task.regularizer, **hp)
    hooks = task_hooks(task, config) if hooks is None else hooks
    net = data.make_network()
    keeper = BestValidation(net, task.patience) if (
        task.keep == "best-val" and data.validation) else None
    evals = {"val": data.validation} if (report_validation or keeper) and data.validation \
        else {}
    # an epoch report goes out even without evaluation, so budgets can stop the trial

    def callback(evaluation: Evaluation) -> bool:
        stop = report(evaluation.step, epoch_metrics(evaluation))
        return bool(stop) or (keeper is not None and keeper.saw(evaluation))

    config_ = TrainConfig(lr=config["lr"], steps=task.steps, batch_size=task.batch_size,
                          seed=data.seed, precision=task.precision)
    result = fine_tune(net, regularizer, data.train, config_, evals, callback, Timer(),
                       hooks=hooks)
    info = {"final_loss": result.final_loss}
    if keeper is not None:
        info |= keeper.restore()
    if task.precision != "float32":
        info["precision"] = task.precision
    return Fitted(net, info=info, steps_done=result.steps_done,
                  train_s=result.train_s, eval_s=result.eval_s)


class BestValidation:
    """Keeps the state of the epoch with the best validation accuracy, the authors' way
    (Li & Zhang's trainer: a later epoch that ties the best replaces it; stop once more
    than ``patience`` epochs in a row did not improve)."""

    def __init__(self, net, patience: int | None) -> None:
        self.net, self.patience = net, patience
        self.best_acc_, self.best_step_, self.state_ = float("-inf"), 0, None
        self.not_improved_ = 0

    def saw(self, evaluation: Evaluation) -> bool:
        """Record an epoch's evaluation; True asks the loop to stop early."""
        acc = evaluation.metrics["val"]["acc"]
        if acc >= self.best_acc_:
            self.best_acc_, self.best_step_, self.not_improved_ = acc, evaluation.step, 0
            self.state_ = {k: v.detach().clone()
                           for k, v in self.net.model.state_dict().items()}
            return False
        self.not_improved_ += 1
        return self.patience is not None and self.not_improved_ > self.patience

    def restore(self) -> dict[str, float]:
        """Load the kept state into the network; what was kept, for the trial's info."""
        if self.state_ is not None:
            self.net.model.load_state_dict(self.state_)
        return {"kept": "best-val", "kept_step": self.best_step_,
                "kept_val_acc": self.best_acc_}
