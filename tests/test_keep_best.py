"""``keep = "best-val"`` and ``patience``: a search trial's standard fit keeps the epoch of
best validation accuracy and stops early, as Li & Zhang's trainer does (issue 28)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.contract.errors import BenchError
from bench.contract.method import FitData
from bench.training.metrics import evaluate
from bench.worker.fit import standard_fit
from bench.zoo.task import Task

# a high learning rate on few examples: validation accuracy goes up and down over epochs
BASE = Task(dataset="digits", n=120, backbone="small-cnn", image_size=8, steps=48,
            batch_size=16, test_limit=200, name="keep-digits",
            label_noise={"kind": "uniform", "rate": 0.4})
HP = {"lr": 0.3, "alpha": 1e-4, "beta": 1e-4}


def fit(validation: bool = True, **options):
    """The standard fit on ``BASE`` with ``options``; its per-epoch reports and the network."""
    task = dataclasses.replace(BASE, **options)
    data = task.load(0)
    train, held_out = data.split() if validation else (data.train, None)
    reports = []
    fit_data = FitData(task, 0, train, held_out, data.num_classes, data.network, standard_fit)
    fitted = standard_fit(fit_data, HP, lambda step, m: reports.append((step, m)) and False,
                          report_validation=False)
    return fitted, reports, held_out if validation else data.test


def test_best_val_keeps_the_epoch_of_best_validation_accuracy():
    fitted, reports, validation = fit(keep="best-val")
    accs = [m["val_acc"] for _, m in reports]
    assert len(accs) == 8 and len(set(accs)) > 1  # the fixture moves: the test can fail
    best = max(accs)
    last_best = max(i for i, a in enumerate(accs) if a == best)  # a later tie replaces
    assert fitted.info["kept_step"] == reports[last_best][0]
    assert fitted.info["kept_val_acc"] == best
    assert evaluate(fitted.network.model, *validation)["acc"] == pytest.approx(best, abs=1e-12)
    assert fitted.steps_done == BASE.steps  # no patience: every step trained


def test_patience_stops_after_that_many_epochs_without_improvement():
    _, reports, _ = fit(keep="best-val")
    accs = [m["val_acc"] for _, m in reports]
    stops = []
    for patience in (0, 1):
        best, waited, stop = float("-inf"), 0, len(accs)  # the authors' rule, by hand
        for i, acc in enumerate(accs):
            if acc >= best:
                best, waited = acc, 0
            else:
                waited += 1
                if waited > patience:
                    stop = i + 1
                    break
        fitted, early, _ = fit(keep="best-val", patience=patience)
        assert len(early) == stop
        assert fitted.steps_done == early[-1][0]
        assert [m["val_acc"] for _, m in early] == accs[:stop]
        stops.append(stop)
    assert stops[0] < len(accs)  # patience 0 stopped early on this fixture


def test_final_is_the_default_and_a_fit_without_validation_keeps_its_final_network():
    final, reports, _ = fit()
    assert "kept" not in final.info and all("val_acc" not in m for _, m in reports)
    retrain_best, _, test = fit(validation=False, keep="best-val", patience=0)
    retrain_final, _, _ = fit(validation=False)
    assert "kept" not in retrain_best.info
    assert retrain_best.steps_done == retrain_final.steps_done == BASE.steps
    for a, b in zip(retrain_best.network.model.parameters(),
                    retrain_final.network.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options, message", [
    ({"keep": "best"}, "task keep must be one of final, best-val, got 'best'"),
    ({"patience": 3}, "task patience stops a fit .* needs keep = \"best-val\""),
    ({"keep": "best-val", "patience": -1}, "task patience"),
])
def test_bad_keep_options_are_refused_in_one_line(options, message):
    with pytest.raises(BenchError, match=message):
        dataclasses.replace(BASE, **options)
