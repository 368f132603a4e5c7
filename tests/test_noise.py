"""Label noise (bench.zoo.noise) and self-labeling (bench.worker.selflabel), Li & Zhang 2021."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bench.contract.errors import BenchError
from bench.driver.suite import parse_suite
from bench.worker.selflabel import (AUTHORS_EPOCHS, SelfLabelingConfig, authors_epoch, relabel,
                                    reweighting, temperature_at)
from bench.zoo.noise import LabelNoise
from bench.zoo.task import Task

C = 10
P_FAIL = 1e-6  # each binomial check may fail by chance this rarely


def within_binomial(count: int, n: int, p: float) -> bool:
    low, high = stats.binom.interval(1 - P_FAIL, n, p)
    return low <= count <= high


@pytest.fixture(scope="module")
def big_labels() -> torch.Tensor:
    return torch.arange(100_000) % C  # 10,000 of each class


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.8])
def test_symmetric_noise_rate_and_uniform_other_classes(big_labels, rate):
    noisy, flipped = LabelNoise("symmetric", rate).corrupt(big_labels, C, seed=0)
    changed = torch.nonzero(noisy != big_labels).flatten()
    assert torch.equal(changed, flipped)  # a flip always lands on another class
    assert within_binomial(len(flipped), len(big_labels), rate)
    for c in range(C):  # from class c: uniform over the C - 1 others, never c itself
        targets = noisy[flipped][big_labels[flipped] == c]
        counts = torch.bincount(targets, minlength=C)
        assert counts[c] == 0
        for other in set(range(C)) - {c}:
            assert within_binomial(int(counts[other]), len(targets), 1 / (C - 1))
    # the noisy labels' class distribution stays balanced (symmetric noise preserves it)
    for count in torch.bincount(noisy, minlength=C).tolist():
        assert within_binomial(count, len(noisy), 1 / C)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_uniform_noise_is_the_authors_exact_count_redrawn_over_all_classes(big_labels, rate):
    """Li & Zhang's random_noise.py: floor(rate x n) labels chosen without replacement and
    redrawn uniformly over all C classes, so rate x (C - 1) / C end up wrong."""
    noisy, wrong = LabelNoise("uniform", rate).corrupt(big_labels, C, seed=0)
    assert torch.equal(torch.nonzero(noisy != big_labels).flatten(), wrong)
    redrawn = int(rate * len(big_labels))
    assert within_binomial(len(wrong), redrawn, (C - 1) / C)
    assert len(wrong) < redrawn  # some redraws land on the true class
    for count in torch.bincount(noisy, minlength=C).tolist():
        assert within_binomial(count, len(noisy), 1 / C)
    # the count is exact: with the true labels all of one class, every redraw that lands
    # elsewhere shows, and the redrawn ones are exactly those that are not class 0 or ...
    zeros = torch.zeros(1000, dtype=torch.long)
    noisy0, _ = LabelNoise("uniform", rate).corrupt(zeros, C, seed=3)
    changed = torch.zeros(1000, dtype=torch.bool)
    for seed_labels in (zeros, zeros + 1):  # ... of class 1, with the same draw
        out, _ = LabelNoise("uniform", rate).corrupt(seed_labels, C, seed=3)
        changed |= out != seed_labels
    assert int(changed.sum()) == int(rate * 1000)


def test_noise_touches_only_the_indices_it_may(big_labels):
    among = torch.arange(0, len(big_labels), 2)  # even indices: a "training split"
    for kind in ("uniform", "flip", "pairflip"):
        noisy, wrong = LabelNoise(kind, 0.5).corrupt(big_labels, C, seed=2, among=among)
        assert len(wrong) > 0 and bool((wrong % 2 == 0).all())
        assert torch.equal(noisy[1::2], big_labels[1::2])
    noisy, wrong = LabelNoise("uniform", 0.5).corrupt(big_labels, C, seed=2, among=among)
    assert within_binomial(len(wrong), len(among) // 2, (C - 1) / C)


def test_flip_is_the_old_symmetric_noise_draw_for_draw(big_labels):
    a, fa = LabelNoise("flip", 0.4).corrupt(big_labels, C, seed=5)
    b, fb = LabelNoise("symmetric", 0.4).corrupt(big_labels, C, seed=5)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    assert LabelNoise().kind == "uniform"


def test_pairflip_goes_to_the_next_class(big_labels):
    noisy, flipped = LabelNoise("pairflip", 0.3).corrupt(big_labels, C, seed=1)
    assert within_binomial(len(flipped), len(big_labels), 0.3)
    assert torch.equal(noisy[flipped], (big_labels[flipped] + 1) % C)
    kept = torch.ones(len(noisy), dtype=torch.bool)
    kept[flipped] = False
    assert torch.equal(noisy[kept], big_labels[kept])


def test_noise_is_fixed_by_the_seed_and_leaves_the_input_alone(big_labels):
    before = big_labels.clone()
    noise = LabelNoise("symmetric", 0.4)
    a, fa = noise.corrupt(big_labels, C, seed=7)
    b, fb = noise.corrupt(big_labels, C, seed=7)
    c, fc = noise.corrupt(big_labels, C, seed=8)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    assert not torch.equal(fa, fc) and not torch.equal(a, c)
    assert torch.equal(big_labels, before)
    clean, none = LabelNoise("symmetric", 0.0).corrupt(big_labels, C, seed=7)
    assert torch.equal(clean, big_labels) and len(none) == 0


@pytest.mark.parametrize("table, field", [
    ({"kind": "uniformly", "rate": 0.2}, "label_noise.kind"),
    ({"kind": "symmetric", "rate": 1.0}, "label_noise.rate"),
    ({"kind": "symmetric", "rate": -0.1}, "label_noise.rate"),
    ({"kind": "symmetric", "rate": "0.2"}, "label_noise.rate"),
    ({"kind": "symmetric", "rate": True}, "label_noise.rate"),
    ({"kind": "symmetric"}, "rate"),
    ({"kind": "symmetric", "rate": 0.2, "seed": 3}, "'seed'"),
    (0.4, "label_noise"),
])
def test_bad_label_noise_is_one_line_naming_the_field(table, field):
    with pytest.raises(BenchError) as err:
        Task("digits", 100, "small-cnn", label_noise=table)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_task_name_mentions_the_noise_and_tasks_differ_by_it():
    clean = Task("digits", 100, "small-cnn")
    sym = Task("digits", 100, "small-cnn", label_noise={"kind": "symmetric", "rate": 0.4})
    pair = Task("digits", 100, "small-cnn", label_noise={"kind": "pairflip", "rate": 0.2})
    assert sym.name.endswith("-sym40") and pair.name.endswith("-pair20")
    assert len({clean.name, sym.name, pair.name}) == 3
    assert hash(sym) != hash(pair)  # tasks key the workers' data cache


def test_task_noise_corrupts_training_labels_only():
    clean = Task("digits", 300, "small-cnn", test_limit=200).load(seed=2)
    task = Task("digits", 300, "small-cnn", test_limit=200,
                label_noise={"kind": "symmetric", "rate": 0.4})
    noisy = task.load(seed=2)
    assert torch.equal(noisy.train[0], clean.train[0])  # the same N examples
    assert torch.equal(noisy.test[0], clean.test[0]) and torch.equal(noisy.test[1], clean.test[1])
    changed = torch.nonzero(noisy.train[1] != clean.train[1]).flatten()
    assert torch.equal(changed, noisy.flipped) and clean.flipped is None
    assert within_binomial(len(changed), 300, 0.4)
    (_, ytr), (_, yva) = noisy.split()  # the search methods' splits are noisy too
    assert sorted(torch.cat([ytr, yva]).tolist()) == sorted(noisy.train[1].tolist())
    again = task.load(seed=2)
    other = task.load(seed=3)
    assert torch.equal(again.flipped, noisy.flipped)
    assert not torch.equal(other.flipped, noisy.flipped)


def test_suite_reads_label_noise_and_refuses_a_bad_one():
    text = """
    [budget]
    cap_s = 60
    [[tasks]]
    dataset = "digits"
    n = 100
    backbone = "small-cnn"
    label_noise = { kind = "pairflip", rate = 0.2 }
    [methods.random]
    trials = 2
    """
    suite = parse_suite(text)
    assert suite.tasks[0].label_noise == LabelNoise("pairflip", 0.2)
    with pytest.raises(BenchError, match="task 1: task label_noise.rate"):
        parse_suite(text.replace("rate = 0.2", "rate = 1.5"))


# ------------------------------------------------------------------ self-labeling


def test_relabel_only_above_the_threshold():
    probs = torch.tensor([[0.95, 0.05, 0.0],   # confident, disagrees with label 1: relabel
                          [0.90, 0.10, 0.0],   # at the threshold, not above: keep
                          [0.05, 0.94, 0.01],  # confident, agrees: nothing to change
                          [0.50, 0.30, 0.20]])  # unsure: keep
    labels = torch.tensor([1, 1, 1, 2])
    mask, predicted = relabel(probs, labels, 0.9)
    assert mask.tolist() == [True, False, False, False]
    assert predicted[mask].tolist() == [0]


def test_reweighting_sums_to_the_batch_size_and_favours_low_loss():
    losses = torch.tensor([0.1, 0.5, 2.0, 4.0, 0.1], requires_grad=True)
    w = reweighting(losses, temperature=2.0)
    assert not w.requires_grad
    assert math.isclose(float(w.sum()), len(losses), rel_tol=1e-6)
    assert (w[:-1].diff() < 0).all() and w[0] == w[4]  # lower loss, higher weight
    assert math.isclose(float(w[0] / w[1]), math.exp(0.4 / 2.0), rel_tol=1e-6)
    cold, hot = reweighting(losses, 0.5), reweighting(losses, 100.0)
    assert cold[0] > w[0] and torch.allclose(hot, torch.ones(5), atol=0.05)


def test_epochs_scale_to_the_tasks_steps():
    assert authors_epoch(0, 300) == 1
    assert authors_epoch(90, 300) == 10  # the authors' epoch 10 begins 9/30 in
    assert math.isclose(authors_epoch(300, 300), AUTHORS_EPOCHS + 1)
    config = SelfLabelingConfig()  # T = 2, reweighting from epoch 5
    assert temperature_at(5.5, config) == temperature_at(6.9, config) == 2.0
    assert math.isclose(temperature_at(7.0, config), 2.0 * math.exp(-0.1))
    assert temperature_at(30.0, config) == 1.0  # floor: half the start


@pytest.mark.parametrize("table, field", [
    ({"correct_threshold": 1.0}, "correct_threshold"),
    ({"temperature": 0}, "temperature"),
    ({"correct_epoch": 0}, "correct_epoch"),
    ({"reweight_epoch": "5"}, "reweight_epoch"),
    ({"temp": 2}, "'temp'"),
])
def test_bad_self_labeling_is_one_line_naming_the_field(table, field):
    with pytest.raises(BenchError) as err:
        Task("digits", 100, "small-cnn", self_labeling=table)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_self_labeling_options_join_the_search_space_when_named():
    from bench.contract.space import Param

    task = Task("digits", 100, "small-cnn", self_labeling={})
    assert task.self_labeling == SelfLabelingConfig()
    assert [p.name for p in task.search_space()] == ["lr", "alpha", "beta"]
    t = Param("temperature", 1.0, 4.0, grid=(1.0, 4.0))
    tuned = Task("digits", 100, "small-cnn", self_labeling={"correct_epoch": 3}, space=(t,))
    assert [p.name for p in tuned.search_space()] == ["lr", "alpha", "beta", "temperature"]
    assert tuned.self_labeling.with_values({"temperature": 3.0, "alpha": 1e-3}) == \
        SelfLabelingConfig(correct_epoch=3, temperature=3.0)
    with pytest.raises(BenchError, match="no hyperparameter 'temperature'"):
        Task("digits", 100, "small-cnn", space=(t,))  # not without self_labeling


def _loop(step: int, total: int = 300, y=(1, 1, 1, 2)):
    from bench.training.train import Loop, TrainConfig

    y = torch.tensor(y)
    return Loop(None, torch.zeros(len(y), 1), y, TrainConfig(lr=0.1, steps=total), 10, step)


def test_hook_relabels_only_from_its_epoch_and_keeps_the_new_labels():
    from bench.worker.selflabel import SelfLabeling

    hook = SelfLabeling(SelfLabelingConfig(correct_epoch=10, correct_threshold=0.9))
    hook.on_start(_loop(0))
    idx = torch.arange(4)
    sure = torch.log(torch.tensor([[0.95, 0.05, 0.0], [0.9, 0.1, 0.0],
                                   [0.05, 0.94, 0.01], [0.5, 0.3, 0.2]]) + 1e-12)
    unsure = torch.zeros(4, 3)
    before = _loop(89)  # the authors' epoch 10 begins at step 90 of 300
    assert hook.targets(before, idx, before.y, sure).tolist() == [1, 1, 1, 2]
    assert hook.on_epoch_end(before) == {"relabeled": 0}
    at = _loop(90)
    assert hook.targets(at, idx, at.y, sure).tolist() == [0, 1, 1, 2]
    later = _loop(200)
    assert hook.targets(later, idx, later.y, unsure).tolist() == [0, 1, 1, 2]  # kept
    assert hook.targets(later, idx[[3, 0]], later.y[[3, 0]], unsure[:2]).tolist() == [2, 0]
    assert hook.on_epoch_end(later) == {"relabeled": 1}


def test_hook_reweights_only_from_its_epoch():
    from bench.worker.selflabel import SelfLabeling

    hook = SelfLabeling(SelfLabelingConfig(reweight_epoch=5, temperature=2.0))
    losses = torch.tensor([0.2, 1.0, 3.0])
    assert hook.data_loss(_loop(39), losses, torch.arange(3)) is None  # epoch 5 at step 40
    weighted = hook.data_loss(_loop(40), losses, torch.arange(3))
    expected = (torch.softmax(-losses / 2.0, 0) * losses).sum()
    assert torch.isclose(weighted, expected) and weighted < losses.mean()


def test_fine_tune_with_self_labeling_on_noisy_digits():
    from bench.zoo.regularizers import make_regularizer
    from bench.worker.selflabel import SelfLabeling
    from bench.training.train import TrainConfig, fine_tune

    task = Task("digits", 200, "small-cnn", image_size=8,
                label_noise={"kind": "symmetric", "rate": 0.4})
    data = task.load(seed=0)
    clean_y = Task("digits", 200, "small-cnn", image_size=8).load(seed=0).train[1]
    net = data.network()
    hook = SelfLabeling(SelfLabelingConfig())  # the authors' defaults
    config = TrainConfig(lr=0.05, steps=70, batch_size=32, seed=0)
    result = fine_tune(net, make_regularizer("layerwise", D=5.0, scale=2.0, D_head=20.0),
                       data.train, config, {"test": data.test}, hooks=[hook])
    assert result.steps_done == 70 and math.isfinite(result.final_loss)
    relabeled = [r.fields["relabeled"] for r in result.reports]
    assert relabeled[0] == 0 and relabeled[-1] > 0  # correction starts late, then acts
    changed = hook.labels_ != data.train[1]
    assert torch.equal(data.train[1], task.load(seed=0).train[1])  # the data is untouched
    # relabeling moves labels back to the truth far more often than away from it
    fixed = int((changed & (hook.labels_ == clean_y)).sum())
    assert fixed > 3 * int((changed & (data.train[1] == clean_y)).sum())


# ------------------------------------------------------------------------- regsl

REGSL_SUITE = """
[budget]
cap_s = 60
[[tasks]]
dataset = "digits"
n = 100
backbone = "small-cnn"
image_size = 8
steps = 40
label_noise = { kind = "symmetric", rate = 0.4 }
[methods.tpe-regsl]
method = "regsl"
search = "tpe"
trials = 3
startup_trials = 2
"""


def test_regsl_tunes_the_two_radii_and_lr_by_default_with_the_chosen_search():
    """As the authors: the backbone's and the head's radius (scale 1), T only if asked;
    lr too, as the loop is SGD (the authors' Adam rate does not carry over)."""
    from bench.contract.method import Context

    suite = parse_suite(REGSL_SUITE)
    task, spec = suite.tasks[0], suite.methods[0]
    method = spec.build()
    assert method.uses_validation and not method.reports_validation
    method.start(Context.of(task, 0, suite.budget))
    assert set(method.suggest("t0000")) == {"lr", "D", "D_head"}
    every = parse_suite(REGSL_SUITE.replace("startup_trials = 2", "").replace(
        'search = "tpe"', 'search = "random"\ntune = ["lr", "D", "scale", "D_head"]\n'
                          "tune_temperature = true"))
    wide = every.methods[0].build()
    wide.start(Context.of(every.tasks[0], 0, every.budget))
    assert set(wide.suggest("t0000")) == {"lr", "D", "scale", "D_head", "temperature"}
    # a search taking trials gets 20 unless the suite sets it
    default = parse_suite(REGSL_SUITE.replace("trials = 3\nstartup_trials = 2", ""))
    assert default.methods[0].build()._search().trials == 20


@pytest.mark.parametrize("change, message", [
    ('search = "de-elbo"', "is not a search method"),
    ('search = "nope"', "unknown method 'nope'"),
    ('search = "regsl"', "search must name a search method"),
    ("trials = -1", "trials"),
    ("trials = 3\nsmoothing = 1", "smoothing"),
    ("trials = 3\ntune_temperature = 1", "tune_temperature"),
    ('trials = 3\ntune = ["D", "D_head"]', "tune must include lr"),
    ('trials = 3\ntune = ["lr", "gamma"]', "tune must be a non-empty list of distinct names"),
])
def test_regsl_bad_options_are_one_line(change, message):
    if change.startswith("search"):  # without the search's own options
        text = REGSL_SUITE.replace("trials = 3\nstartup_trials = 2", "").replace(
            'search = "tpe"', change)
    else:
        text = REGSL_SUITE.replace("trials = 3", change)
    with pytest.raises(BenchError, match=message) as err:
        parse_suite(text)
    assert "\n" not in str(err.value) and "tpe-regsl" in str(err.value)


def test_regsl_trial_trains_with_constraints_and_self_labeling():
    from bench.contract.method import FitData

    suite = parse_suite(REGSL_SUITE)
    task, method = suite.tasks[0], suite.methods[0].build()
    data = task.load(seed=0)
    reports = []
    fitted = method.fit(
        FitData(task, 0, data.train, None, data.num_classes, data.network),
        {"lr": 0.05, "D": 0.5, "D_head": 3.0},  # scale: the authors' 1
        lambda step, metrics: reports.append(metrics) and False)
    assert fitted.steps_done == 40 and all("relabeled" in r for r in reports)
    net = fitted.network
    head = dict(net.head_parameters())["head.weight"]
    assert float(head.detach().norm()) <= 3.0 + 1e-4  # the head's constraint radius held
    for name, w in net.backbone_parameters():
        if name in net.layer_weights:
            if name not in net.stage_of:
                continue
            radius = 0.5 * 1.0 ** net.stage_of[name]
            assert float((w.detach() - net.mu0[name]).norm()) <= radius + 1e-4


def test_the_noisy_suite_reads_with_one_task_per_noise_rate():
    from pathlib import Path

    from bench.driver.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "noisy.toml")
    rates = [0.0, 0.2, 0.4, 0.6]
    assert [t.label_noise.rate for t in suite.tasks] == rates * 2  # small-cnn, then Lite0
    assert {t.backbone for t in suite.tasks} == {"small-cnn", "efficientnet-lite0"}
    assert len({t.name for t in suite.tasks}) == 8 and len(suite.seeds) == 3
    # the authors' protocol: uniform noise, clean validation, best epoch with early stopping
    assert all(t.label_noise.kind == "uniform" and t.clean_validation and
               t.keep == "best-val" and t.patience is not None for t in suite.tasks)
    assert {m.plugin for m in suite.methods} >= {"grid", "tpe", "regsl", "de-elbo",
                                                 "laplace-marglik", "ntk-marglik"}


def test_clean_validation_corrupts_only_the_search_splits_training_part():
    """Li & Zhang copy the validation split before corrupting: with clean_validation (the
    default with label noise) the search split is drawn on the true labels as without
    noise, its 20% keep them, and only the 80% are corrupted (floor(rate x 80%) redrawn)."""
    clean = Task("digits", 200, "small-cnn", image_size=8)
    noisy = Task("digits", 200, "small-cnn", image_size=8,
                 label_noise={"kind": "uniform", "rate": 0.5})
    assert noisy.clean_validation and not clean.clean_validation
    a, b = clean.load(seed=3), noisy.load(seed=3)
    (_, ya), (_, va_a) = a.split()
    (_, yb), (_, va_b) = b.split()
    assert torch.equal(va_a, va_b)  # the validation labels are the true ones
    tr, va = b.split_indices
    assert set(b.flipped.tolist()) <= set(tr.tolist())
    assert within_binomial(len(b.flipped), int(0.5 * len(tr)), 0.9)  # 10 classes: 9/10 wrong
    assert not torch.equal(ya, yb)
    old = Task("digits", 200, "small-cnn", image_size=8, clean_validation=False,
               label_noise={"kind": "uniform", "rate": 0.5}).load(seed=3)
    assert old.split_indices is None and not torch.equal(old.split()[1][1], va_a)


def test_clean_validation_without_label_noise_is_refused():
    with pytest.raises(BenchError, match="clean_validation keeps the validation labels"):
        Task("digits", 200, "small-cnn", clean_validation=True)


def test_the_report_says_what_clean_validation_gave_each_method():
    import json as _json

    import pandas as pd

    from bench.analysis.report import clean_validation_note
    from bench.contract import schema as S

    clean = pd.DataFrame({S.INFO: [_json.dumps({"label_noise_flipped": 30,
                                                "label_noise_clean_validation": True}), None]})
    assert "the validation 20% kept their true labels" in clean_validation_note(clean)
    noisy = pd.DataFrame({S.INFO: [_json.dumps({"label_noise_flipped": 30}), None]})
    assert clean_validation_note(noisy) == ""  # noise over all N (results/noisy): no claim


def test_regsl_passes_check_method_its_suggestions_checked_against_its_own_space():
    """regsl suggests radii the task's space does not hold: it names its own space
    (``searched_space``), which the campaign checks its suggestions against, live."""
    from baselines._regsl import RegularizedSelfLabeling
    from bench.testing import check_method

    summary = check_method(RegularizedSelfLabeling, {"search": "random", "trials": 3},
                           bad_options=[{"tune": ["D"]}])
    assert summary["trials"] >= 2 and summary["ok"] >= 1 and "replayed" not in summary
