"""Multi-fidelity and BO methods (hyperband, asha, gp-bo), and fidelity in replay: recorded
per-epoch validation metrics replayed at their steps, so pruners act on them."""

import binascii
import json
import time

import pandas as pd
import pytest

from baselines import ASHASearch, GPBOSearch, GridSearch, HyperbandSearch
from bench.cli import main
from bench.contract import schema as S
from bench.contract.space import Param
from bench.driver.campaign import Campaign, run_inline
from bench.driver.replay_suite import parse_replay_suite, run_replay
from bench.driver.budget import Budget
from bench.records.tables import frame, write_table
from bench.testing import check_method
from bench.zoo.task import Task


@pytest.mark.parametrize("cls, options", [
    (HyperbandSearch, {"trials": 6}),
    (HyperbandSearch, {"trials": 6, "sampler": "tpe", "startup_trials": 2}),
    (ASHASearch, {"trials": 6, "reduction_factor": 2}),
    (GPBOSearch, {"trials": 5, "startup_trials": 2}),
])
def test_new_methods_pass_check_method(cls, options):
    summary = check_method(cls, options)
    assert summary["ok"] >= 2 and summary["retrains"] >= 1


LIVE_SUITE = """
[[tasks]]
dataset = "digits"
n = 60
backbone = "small-cnn"
steps = 12
batch_size = 16
"""  # 48 training examples: 3 steps an epoch, 4 epochs


@pytest.mark.parametrize("options, message", [
    ('[methods.hyperband]\nsampler = "magic"\n', "unknown sampler 'magic'; known: random, tpe"),
    ("[methods.hyperband]\nreduction_factor = 1\n", "reduction_factor must be an integer >= 2"),
    ("[methods.hyperband]\nmin_resource = 1.5\n", "min_resource must be an integer >= 1"),
    ("[methods.asha]\nmin_resource = 5\n", "min_resource 5 exceeds the 4 epochs of task"),
    ("[methods.asha]\nmin_early_stopping_rate = -1\n", "min_early_stopping_rate must be"),
    ("[methods.asha]\nstartup_trials = -1\n", "startup_trials must be an integer >= 0"),
    ("[methods.gp-bo]\nstartup_trials = 0\n", "startup_trials must be an integer >= 1"),
    ("[methods.gp-bo]\ntrials = 0\n", "trials must be an integer >= 1"),
])
def test_bad_options_are_refused_when_the_suite_is_read(tmp_path, capsys, options, message):
    path = tmp_path / "bad.toml"
    path.write_text(LIVE_SUITE + options)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


# ------------------------------------------------- a learning-curve table, by hand

LRS, ALPHAS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001), (0.01, 0.001, 0.0001, 0.0)
EPOCHS, STEPS_PER_EPOCH = 9, 2
SETUP_S, TRAIN_S, EVAL_S = 1.0, 8.0, 1.0  # a report at step s: 1 + 9 * s / 18 seconds in


def _curve(i: int) -> list[float]:
    """Validation NLL per epoch: curves that cross (a fast start is not a good end)."""
    final, gap = 0.5 + 0.05 * (5 * i % 24), 0.2 + 0.08 * (7 * i % 24)
    return [final + gap / e for e in range(1, EPOCHS + 1)]


CURVES = {json.dumps({"alpha": a, "lr": lr}, sort_keys=True): _curve(i)
          for i, (lr, a) in enumerate((lr, a) for lr in LRS for a in ALPHAS)}


def _write_run(path, validation=True, only=None):
    """A harness run directory of one grid: every configuration's search run with its
    per-epoch reports (validation metrics if ``validation``; on the first ``only``
    configurations) and its retrain."""
    rows, reports = [], []
    for i, (config, curve) in enumerate(CURVES.items()):
        own = {S.SUITE: "by-hand", S.TASK: "curves", S.METHOD: "grid", S.SEED: 0,
               S.STATUS: S.OK, S.CONFIG: config, S.STEPS_DONE: EPOCHS * STEPS_PER_EPOCH,
               S.WALL_S: SETUP_S + TRAIN_S + EVAL_S, S.TRAIN_S: TRAIN_S, S.EVAL_S: EVAL_S}
        trial = f"t{i:04d}"
        rows.append({**own, S.TRIAL_ID: trial, S.KIND: S.SEARCH, S.VAL_NLL: curve[-1],
                     S.VAL_ACC: 1 / (1 + curve[-1])})
        rows.append({**own, S.TRIAL_ID: f"{trial}-retrain", S.KIND: S.RETRAIN,
                     S.RETRAIN_OF: trial, S.TEST_NLL: curve[-1], S.TEST_ACC: 1 / (1 + curve[-1])})
        validated = validation and (only is None or i < only)
        for epoch, nll in enumerate(curve, 1):
            metrics = {S.VAL_NLL: nll, S.VAL_ACC: 1 / (1 + nll)} if validated else {}
            reports.append({S.SUITE: "by-hand", S.TASK: "curves", S.METHOD: "grid", S.SEED: 0,
                            S.TRIAL_ID: trial, S.STEP: epoch * STEPS_PER_EPOCH,
                            S.TRAIN_LOSS: nll, **metrics})
    path.mkdir()
    write_table(path / S.TRIALS_FILE, frame(rows, S.TRIAL_COLUMNS))
    write_table(path / S.REPORTS_FILE, frame(reports, S.REPORT_COLUMNS))
    return path


def _suite(records, methods, workers=1, task="curves", seeds="[0]"):
    return (f'name = "fidelity"\nrecords = "{records}"\nseeds = {seeds}\n'
            f"[budget]\nworkers = {workers}\ncpus_per_worker = 1\ncap_s = 1e12\n"
            f'[[tasks]]\nname = "{task}"\n' + methods)


def _replay(tmp_path, methods, workers=1):
    records = _write_run(tmp_path / "records")
    out = run_replay(parse_replay_suite(_suite(records, methods, workers)), tmp_path / "out",
                     progress=False)
    return pd.read_parquet(out / S.TRIALS_FILE), pd.read_parquet(out / S.REPORTS_FILE)


def _stops_seen(trials, reports, method):
    """{trial number: epoch it was stopped at, None (trained to the end) or "repeat"},
    and the trials' configurations, from a replay's records."""
    mine = trials[(trials[S.METHOD] == method) & (trials[S.KIND] == S.SEARCH)]
    counts = reports[reports[S.METHOD] == method].groupby(S.TRIAL_ID).size()
    outcome = {S.PRUNED: lambda t: int(counts[t]), S.OK: lambda t: None,
               S.REPEAT: lambda t: "repeat"}
    return ({int(r[S.TRIAL_ID][1:]): outcome[r[S.STATUS]](r[S.TRIAL_ID])
             for r in mine.to_dict("records")},
            list(mine.sort_values(S.TRIAL_ID)[S.CONFIG]))


def _successive_halving(configs, brackets, eta, workers):
    """The asynchronous successive-halving rule, computed here: trial j, of bracket s,
    meets rung k at epoch eta**(s + k) (before the last epoch); its NLL joins the rung and
    it goes on if it ranks in the top floor(n / eta) of the rung's n values (the best,
    while n < eta), the values being its own and those of the trials of its bracket heard
    before it was suggested (trials 0 .. j - workers). A configuration suggested again is
    not run (the campaign answers it from its first run: "repeat") and joins no rung.
    Returns {j: epoch stopped, None or "repeat"}."""
    rungs: dict[tuple[int, int], dict[int, float]] = {}
    stops = {}
    for j, config in enumerate(configs):
        if config in configs[:j]:
            stops[j] = "repeat"
            continue
        heard = [i for i in range(j - workers + 1) if brackets[i] == brackets[j]]
        stops[j], k = None, 0
        while (epoch := eta ** (brackets[j] + k)) < EPOCHS:
            value = CURVES[config][epoch - 1]
            rung = rungs.setdefault((brackets[j], k), {})
            values = sorted([rung[i] for i in heard if i in rung] + [value])
            rung[j] = value
            if value > values[max(len(values) // eta - 1, 0)]:
                stops[j] = epoch
                break
            k += 1
    return stops


@pytest.mark.parametrize("workers", [1, 2])
def test_asha_promotions_on_a_learning_curve_table(tmp_path, workers):
    trials, reports = _replay(tmp_path, "[methods.asha]\ntrials = 40\nreduction_factor = 3\n",
                              workers)
    seen, configs = _stops_seen(trials, reports, "asha")
    expected = _successive_halving(configs, [0] * len(configs), eta=3, workers=workers)
    assert seen == expected
    assert {1, 3, None} <= set(expected.values())  # stopped at both rungs, and finished
    pruned = trials[(trials[S.METHOD] == "asha") & (trials[S.STATUS] == S.PRUNED)]
    # a trial stopped at epoch e ran its setup and e of the 9 epochs' work, in simulated time
    stopped = pruned[S.TRIAL_ID].map(lambda t: expected[int(t[1:])]).astype(float)
    assert (pruned[S.WALL_S] - (SETUP_S + (TRAIN_S + EVAL_S) * stopped / EPOCHS)).abs().max() < 1e-9


def _hyperband_brackets(study_name, n, eta):
    """Optuna's bracket of each trial number: brackets s = 0 .. smax (r eta**smax <= R),
    bracket s weighted by its Hyperband budget ceil(B eta**(smax - s) / (smax - s + 1)),
    drawn by a CRC-32 of "<study name>_<number>"."""
    smax = max(s for s in range(EPOCHS) if eta ** s <= EPOCHS)
    budgets = [-(-(smax + 1) * eta ** (smax - s) // (smax - s + 1)) for s in range(smax + 1)]
    brackets = []
    for number in range(n):
        draw = binascii.crc32(f"{study_name}_{number}".encode()) % sum(budgets)
        brackets.append(next(s for s in range(smax + 1) if draw < sum(budgets[: s + 1])))
    return brackets


@pytest.mark.parametrize("workers", [1, 2])
def test_hyperband_brackets_on_a_learning_curve_table(tmp_path, workers):
    trials, reports = _replay(tmp_path, "[methods.hyperband]\ntrials = 40\n", workers)
    seen, configs = _stops_seen(trials, reports, "hyperband")
    brackets = _hyperband_brackets("hyperband-seed0", len(configs), eta=3)
    expected = _successive_halving(configs, brackets, eta=3, workers=workers)
    assert seen == expected
    assert set(brackets) == {0, 1, 2}
    by_bracket = {s: {expected[j] for j in expected if brackets[j] == s} for s in (0, 1, 2)}
    assert {1, 3} <= by_bracket[0] and 3 in by_bracket[1] and 1 not in by_bracket[1]
    assert by_bracket[2] - {"repeat"} == {None}  # its one rung is the last epoch: all finish


def test_a_pruning_method_on_records_without_validation_is_refused(tmp_path, capsys):
    for name, kwargs, message in [("none", {"validation": False}, "have none for task curves"),
                                  ("some", {"only": 5}, "only 5 of the 24 search runs")]:
        records = _write_run(tmp_path / name, **kwargs)
        path = tmp_path / f"{name}.toml"
        path.write_text(_suite(records, "[methods.asha]\n"))
        assert main(["replay", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (tmp_path / "out").exists()
    # a method that does not prune replays them as before
    suite = parse_replay_suite(_suite(tmp_path / "none", "[methods.random]\ntrials = 4\n"))
    assert (pd.read_parquet(run_replay(suite, tmp_path / "out", progress=False)
                            / S.TRIALS_FILE)[S.STATUS] == S.OK).all()


def test_records_method_replays_the_grid_of_a_run_directory_that_ran_more(tmp_path, capsys):
    records = _write_run(tmp_path / "records")
    trials = pd.read_parquet(records / S.TRIALS_FILE)
    other = trials[trials[S.KIND] == S.SEARCH].assign(  # off-grid runs, no per-epoch reports
        **{S.METHOD: "random", S.CONFIG: lambda t: [json.dumps({"alpha": 0.5, "lr": 0.5 + i})
                                                     for i in range(len(t))]})
    write_table(records / S.TRIALS_FILE, pd.concat([trials, other], ignore_index=True))
    path = tmp_path / "suite.toml"
    path.write_text(_suite(records, "[methods.asha]\ntrials = 20\n"))
    assert main(["replay", str(path), "--out", str(tmp_path / "refused"), "--quiet"]) == 2
    assert "only 24 of the 48 search runs" in capsys.readouterr().err
    path.write_text('records_method = "grid"\n' + path.read_text())
    assert main(["replay", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    replayed = pd.read_parquet(tmp_path / "out" / S.TRIALS_FILE)
    assert set(replayed[S.CONFIG]) <= set(CURVES) and (replayed[S.STATUS] == S.PRUNED).any()
    path.write_text(path.read_text().replace('"grid"', '"gird"'))
    assert main(["replay", str(path), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "records_method 'gird' is not a method of the records; they have: grid, random" \
        in capsys.readouterr().err


@pytest.mark.parametrize("method", ["tpe-prune", "hyperband", "asha"])
def test_pruning_methods_are_refused_on_published_records(tmp_path, capsys, method):
    path = tmp_path / "published.toml"
    path.write_text(_suite("published:cifar10-resnet50", f"[methods.{method}]\n",
                           task="cifar10-resnet50-N100", seeds="[1001]"))
    assert main(["replay", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "prunes on per-epoch validation metrics" in err and "published" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_gp_bo_replays_only_recorded_configurations(tmp_path):
    trials, _ = _replay(tmp_path, "[methods.gp-bo]\ntrials = 10\nstartup_trials = 4\n")
    search = trials[trials[S.KIND] == S.SEARCH]
    assert len(search) == 10 and search[S.STATUS].isin([S.OK, S.REPEAT]).all()
    assert set(search[S.CONFIG]) <= set(CURVES)


# ------------------------------------------------- a harness run directory, replayed


@pytest.mark.ray
def test_a_harness_run_directory_replays_with_tpe_prune_pruning(tmp_path):
    task = Task("digits", 60, "small-cnn", image_size=8, steps=12, batch_size=16,
                test_limit=90, name="digits-tiny",
                space=(Param("lr", 1e-3, 0.3, (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)),
                       Param("alpha", 1e-6, 1e-2, (1e-2, 0.0)), Param("beta", 1e-4, 1e-4, (1e-4,))))
    grid = GridSearch(retrain_all=True, report_validation=True)  # the reference grid's way
    campaign = Campaign("tiny", task, "grid", grid, seed=0,
                        budget=Budget(cap_s=1e9), clock0=time.perf_counter())
    run_inline(campaign)  # the harness's own campaign code, trials trained for real
    records = tmp_path / "records"
    records.mkdir()
    write_table(records / S.TRIALS_FILE, frame(campaign.rows, S.TRIAL_COLUMNS))
    write_table(records / S.REPORTS_FILE, frame(campaign.reports, S.REPORT_COLUMNS))
    assert (pd.read_parquet(records / S.TRIALS_FILE)[S.STATUS] == S.OK).all()

    suite = parse_replay_suite(_suite(records, "[methods.tpe-prune]\ntrials = 12\n"
                                      "startup_trials = 4\n", task="digits-tiny"))
    assert suite.tasks[0].steps == 12 and suite.tasks[0].epochs == 4
    out = run_replay(suite, tmp_path / "out", progress=False)
    trials = pd.read_parquet(out / S.TRIALS_FILE)
    reports = pd.read_parquet(out / S.REPORTS_FILE)
    search = trials[trials[S.KIND] == S.SEARCH]
    assert (search[S.STATUS] == S.PRUNED).any() and (search[S.STATUS] == S.OK).any()
    pruned = search.loc[search[S.STATUS] == S.PRUNED, S.TRIAL_ID]
    # the replayed reports are the recorded ones: per-epoch steps with validation NLL
    seen = reports[reports[S.TRIAL_ID].isin(pruned)]
    assert seen[S.VAL_NLL].notna().all() and set(seen[S.STEP]) <= {3, 6, 9, 12}
    assert (seen[S.EPOCH] == seen[S.STEP] / 3).all()
