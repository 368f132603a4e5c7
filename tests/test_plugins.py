"""Method plugins: entry-point discovery and the check_method certificate."""

import importlib
import json
import tempfile

import numpy as np
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from baselines import GridSearch, PrunedTPESearch, RandomSearch, TPESearch
from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Method
from bench.contract.plugins import available_methods, method_class
from bench.testing import (CHECKS, _live_run, _replay_run, check_method, method_checks,
                           parametrize_with_checks)

EXAMPLE = Path(__file__).parent / "plugin_example"
sys.path.insert(0, str(EXAMPLE))  # the example plugins, importable without installing
from map_sweep import MapSweep  # noqa: E402
from median_stop import MedianStop  # noqa: E402
from uniform_random import UniformRandom  # noqa: E402

CERTIFIED = [
    (GridSearch, {"max_trials": 4}), (RandomSearch, {"trials": 4}),
    (TPESearch, {"trials": 4, "startup_trials": 2}),
    (PrunedTPESearch, {"trials": 5, "startup_trials": 2}),
    (UniformRandom, {"trials": 4}), (MedianStop, {"trials": 6}),
]


@parametrize_with_checks(CERTIFIED)
def test_built_in_and_example_methods_pass_every_check(check):
    check()


@pytest.mark.parametrize("cls, options", CERTIFIED)
def test_check_method_summarises_the_live_run_and_the_replay(cls, options):
    summary = check_method(cls, options)  # the runs are shared with the checks above
    assert summary["ok"] >= 2 and summary["retrains"] >= 1
    assert summary["replayed_ok"] >= 1  # every search method is replayed
    if cls.reports_validation:  # pruners replay on recorded per-epoch validation curves
        assert summary["replayed_pruned"] >= 1
    else:  # every replayed trial found its record (a repeat is answered by its first run)
        assert summary["replayed_ok"] + summary["replayed_repeats"] == summary["replayed"]


LEARNED_OPTIONS = {"lrs": [0.03, 0.01]}
LEARNED_BAD_OPTIONS = [{"lrs": []}, {"alpha": -1.0}, {"lrs": [5.0]}, {"beta": "1e-3"}]


def test_the_worked_learned_example_passes_every_check():
    """docs/plugins.md's learned example: it suggests only lr, computes its own objective
    in fit, is not replayed, and refuses each bad option set in start."""
    checks = method_checks(MapSweep, LEARNED_OPTIONS, 60.0, LEARNED_BAD_OPTIONS)
    names = [c.name for c in checks]
    assert "replays_on_recorded_runs" not in names  # learned methods are never replayed
    assert {"is_deterministic", "refuses_bad_options"} <= set(names)
    summary = check_method(MapSweep, LEARNED_OPTIONS, 60.0, LEARNED_BAD_OPTIONS)
    assert summary["ok"] >= 1 and summary["retrains"] == 0
    assert summary["bad_options_refused"] == len(LEARNED_BAD_OPTIONS)
    rows = _live_run(MapSweep, LEARNED_OPTIONS, 60.0).tuning()
    ok = [r for r in rows if r[S.STATUS] == S.OK]
    assert all(r[S.KIND] == S.LEARNED and json.loads(r[S.CONFIG]).keys() == {"lr"} for r in rows)
    info = json.loads(ok[0][S.INFO])  # its own objective: the MAP loss on the training set
    assert ok[0][S.OBJECTIVE] == pytest.approx(info["train_nll"] + 0.5e-3 * info["drift"],
                                               rel=0.05)
    assert np.isfinite(ok[0][S.TEST_NLL])  # scored on the test set by the harness


def test_the_pruning_example_is_replayed_on_recorded_curves_and_prunes_by_the_rule():
    """MedianStop replays on the reference grid's per-epoch curves; a trial is compared
    only with the trials heard when it was suggested, so two replays agree."""
    run = _replay_run(MedianStop, {"trials": 6})
    assert run.records.endswith("default") and run.reports
    assert any(r[S.VAL_NLL] is not None for r in run.reports)
    pruned = [r for r in run.rows if r[S.STATUS] == S.PRUNED]
    assert pruned and run.rows == _replay_run(MedianStop, {"trials": 6}, attempt=2).rows


def test_checks_are_named_for_pytest_ids():
    checks = method_checks(UniformRandom, {"trials": 4})
    assert [c.name for c in checks] == [n for n in CHECKS if n != "refuses_bad_options"]
    assert "UniformRandom-replays_on_recorded_runs" in [c.id for c in checks]
    with_bad = method_checks(UniformRandom, {"trials": 4}, bad_options=[{"trials": 0}])
    assert [c.name for c in with_bad] == list(CHECKS)


def test_built_ins_are_registered_by_entry_point():
    assert {"grid", "random", "tpe", "tpe-prune"} <= set(available_methods())
    assert method_class("grid") is GridSearch
    with pytest.raises(BenchError, match="unknown method 'nope'"):
        method_class("nope")


def test_a_plugin_installed_from_its_own_package_is_found_and_certified(tmp_path, monkeypatch):
    target = tmp_path / "site"
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True)
    monkeypatch.syspath_prepend(str(target))
    importlib.invalidate_caches()
    assert "uniform-random" in available_methods()
    cls = method_class("uniform-random")
    assert cls.__module__ == "uniform_random"
    assert check_method(cls, {"trials": 4})["trials"] == 4
    assert method_class("median-stop").reports_validation


def test_the_cap_stops_an_endless_method():
    from bench.testing import _live_run

    checks = {c.name: c for c in method_checks(RandomSearch, {"trials": 10**6}, cap_s=1.0)}
    for name in ("hooks_raise_nothing", "survives_a_failed_trial", "honours_the_cap"):
        checks[name]()
    assert len(_live_run(RandomSearch, {"trials": 10**6}, 1.0).tuning()) < 10**6


class WritesFiles(Method):
    name = "writes-files"

    def start(self, context):
        super().start(context)
        with tempfile.TemporaryFile() as log:  # forbidden, even if it leaves nothing
            log.write(b"started")

    def suggest(self, trial_id):
        return FINISHED


class BadConstructor(Method):
    name = "bad-constructor"

    def __init__(self, trials=3):
        self.trials = trials * 2  # does not store the option as given


class OutOfSpace(RandomSearch):
    name = "out-of-space"

    def suggest(self, trial_id):
        config = super().suggest(trial_id)
        return config if config == FINISHED else {**config, "lr": 50.0}


class ReadsMissingMetric(RandomSearch):
    """Prunes on val_nll without asking for validation reports: metrics lack the key."""

    name = "reads-missing-metric"

    def on_report(self, trial_id, step, metrics):
        return metrics["val_nll"] > 2.0


class ReadsMissingResult(RandomSearch):
    name = "reads-missing-result"

    def on_result(self, result):
        super().on_result(result)
        print(result.metrics["test_acc"])  # search trials have no test metrics


class EveryTrialFails(RandomSearch):
    """Its fit (the trial's own code) reads a metric that is not there."""

    name = "every-trial-fails"

    def fit(self, data, config, report):
        return super().fit(data, config, lambda step, metrics: report(step, metrics) or
                           metrics["val_acc"] < 0)


class UnseededRandom(UniformRandom):
    """Draws from a generator nobody seeded: a resumed run would get other suggestions."""

    name = "unseeded-random"

    def start(self, context):
        super().start(context)
        self.rng_ = np.random.default_rng()


class SharedCount(MedianStop):
    """Prunes at the second epoch report it has seen, counted on the class: a count every
    instance shares, so a resumed run (a new instance) decides otherwise."""

    name = "shared-count"
    reports_seen = 0

    def on_report(self, trial_id, step, metrics):
        type(self).reports_seen += 1
        return type(self).reports_seen == 2


class ContinuousOnly(UniformRandom):
    """The README's example as it was: it ignores the discrete space of a replay."""

    name = "continuous-only"

    def _draw(self, p):
        return float(np.exp(self.rng_.uniform(np.log(p.low), np.log(p.high))))


@pytest.mark.parametrize("cls, options, message", [
    (WritesFiles, {}, "check writes_no_files failed for WritesFiles: .*wrote files"),
    (BadConstructor, {"trials": 3}, "constructor_stores_options.*store option 'trials'"),
    (OutOfSpace, {"trials": 3}, r"suggests_inside_the_space.*suggest\(\) gave trial t0000 a bad "
     r"configuration: lr = 50.0 is outside \[0.0001, 0.1\] and none of its grid values"),
    (ReadsMissingMetric, {"trials": 3}, r"check hooks_raise_nothing failed for "
     r"ReadsMissingMetric: a hook of the method raised: method 'reads-missing-metric' raised "
     r"in on_report\(\): KeyError: 'val_nll'(.|\n)*Traceback(.|\n)*in on_report"),
    (ReadsMissingResult, {"trials": 3}, r"hooks_raise_nothing(.|\n)*raised in on_result\(\): "
     r"KeyError: 'test_acc'"),
    (EveryTrialFails, {"trials": 3}, r"check some_trials_succeed failed(.|\n)*no trial ended "
     r"ok \(3 trials: failed\); trial t0001: KeyError: 'val_acc'(.|\n)*in <lambda>"),
    (ContinuousOnly, {"trials": 3}, r"check replays_on_recorded_runs failed(.|\n)*suggest\(\) "
     r"gave trial t0000 a bad configuration: \w+ = [0-9.e-]+ is none of its recorded values"),
    (UnseededRandom, {"trials": 3}, r"check is_deterministic failed for UnseededRandom: asked "
     r"again with the same seed and results, the method differs: .*trial t0000 at .*"
     r"seeded by context.seed"),
    (SharedCount, {"trials": 4}, r"check is_deterministic failed for SharedCount: on_report\(\) "
     r"differs between two runs with the same seed, at #\d+: \('t\d+', \d+, (True|False)\)"),
])
def test_check_method_catches_contract_breaches(cls, options, message):
    with pytest.raises(AssertionError, match=message):
        check_method(cls, options)


def test_check_method_catches_a_method_that_imports_ray(tmp_path, monkeypatch):
    (tmp_path / "uses_ray.py").write_text(
        "import ray\nfrom bench.contract.method import Method, FINISHED\n"
        "class UsesRay(Method):\n    name = 'uses-ray'\n"
        "    def suggest(self, trial_id):\n        return FINISHED\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("uses_ray")
    with pytest.raises(AssertionError, match="uses Ray"):
        check_method(module.UsesRay)


class RefusesWithValueError(UniformRandom):
    name = "refuses-with-value-error"

    def start(self, context):
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        super().start(context)


@pytest.mark.parametrize("cls, bad, message", [
    (MedianStop, [{"trials": 0}, {"min_finished": 2.5}], None),  # each refused: passes
    (UniformRandom, [{"trials": -1}], r"check refuses_bad_options failed for UniformRandom: "
     r"start\(\) accepted bad options \{'trials': -1\}: raise BenchError"),
    (RefusesWithValueError, [{"trials": 0}], r"refuses_bad_options(.|\n)*start\(\) refused "
     r"bad options \{'trials': 0\} with ValueError: trials must be >= 1; raise BenchError"),
])
def test_bad_options_are_certified_refused_in_start(cls, bad, message):
    check = next(c for c in method_checks(cls, {}, bad_options=bad)
                 if c.name == "refuses_bad_options")
    if message is None:
        check()
    else:
        with pytest.raises(AssertionError, match=message):
            check()


def test_good_options_refused_in_start_are_named_as_such_not_as_a_bug():
    """A BenchError in start is how a method refuses options: check_method says the options
    given were refused (and where bad ones go), not that a hook has a bug."""
    with pytest.raises(AssertionError, match=r"check hooks_raise_nothing failed for "
                       r"MedianStop: the method refused the options \{'trials': 0\}: trials "
                       r"must be an integer >= 1, got 0 \(give check_method options it "
                       r"accepts; certify refusals with bad_options"):
        check_method(MedianStop, {"trials": 0})


class SuggestsOneConfiguration(Method):
    """Suggests the same configuration three times: two repeats of the first run."""

    name = "suggests-one-configuration"

    def start(self, context):
        super().start(context)
        self.left_, self.heard_ = 3, []

    def suggest(self, trial_id):
        if not self.left_:
            return FINISHED
        self.left_ -= 1
        return {p.name: p.grid[0] for p in self.context_.space}

    def on_result(self, result):
        self.heard_.append(result)


def test_a_repeat_is_recorded_after_its_run_and_told_as_that_run():
    """With two workers the repeat t0001 waits for t0000; its record (and progress line)
    follows t0000's; the method hears it as ok with t0000's score, the records say repeat."""
    from bench.driver.campaign import Campaign, CampaignQueue
    from bench.driver.replay import SimulatedClock, simulate
    from bench.driver.budget import Budget
    from bench.testing import _recorded

    recorded, task, seed, grid_s = _recorded()
    clock, order = SimulatedClock(), []
    method = SuggestsOneConfiguration()
    budget = Budget(workers=2, cap_s=grid_s)

    def plan():
        return Campaign("repeats", task, method.name, method, seed, budget, 0.0, clock=clock,
                        discrete=True, on_record=lambda c, row: order.append(
                            (row[S.TRIAL_ID], row[S.STATUS])))

    simulate(CampaignQueue([plan]), recorded, budget.workers, clock)
    tuning = [o for o in order if "retrain" not in o[0]]
    assert tuning == [("t0000", S.OK), ("t0001", S.REPEAT), ("t0002", S.REPEAT)]
    first, *repeats = method.heard_
    assert [r.trial_id for r in repeats] == ["t0001", "t0002"]
    assert all(r.status == S.OK and r.score == first.score is not None and
               r.config == first.config for r in repeats)


def test_networks_fits_and_results_print_short_and_leave_out_unmeasured_metrics():
    from bench.contract.method import Fitted, Result
    from bench.worker.trial import task_data
    from bench.testing import TINY_TASK

    net = task_data(TINY_TASK, 0).network()
    count = sum(p.numel() for p in net.model.parameters())
    assert repr(net) == f"Network(Sequential, {count:,} parameters, head 'head')"
    assert "tensor" not in repr(Fitted(net, objective=1.5)) and len(repr(Fitted(net))) < 200
    result = Result("t0000", {"lr": 0.1}, S.OK, 1.0,
                    {S.TEST_NLL: float("nan"), S.TEST_ACC: 0.5, S.VAL_NLL: None})
    assert result.metrics == {S.TEST_ACC: 0.5}


@pytest.mark.parametrize("module", ["median_stop.py", "map_sweep.py"])
def test_the_docs_show_the_worked_examples_as_they_are_tested(module):
    code = (EXAMPLE / module).read_text().split('"""', 2)[2].strip("\n")  # past the docstring
    assert code in (EXAMPLE.parents[1] / "docs" / "plugins.md").read_text()


def test_parametrize_with_checks_takes_bad_options_in_a_triple():
    mark = parametrize_with_checks([(MedianStop, {"trials": 6}, [{"trials": 0}]), UniformRandom])
    checks = mark.args[1]
    refusal = next(c for c in checks if c.id == "MedianStop-refuses_bad_options")
    assert refusal.bad_options == ({"trials": 0},)
    refusal()
    assert "UniformRandom-refuses_bad_options" not in [c.id for c in checks]
