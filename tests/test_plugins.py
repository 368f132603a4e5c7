"""Method plugins: entry-point discovery and the check_method certificate."""

import importlib
import tempfile

import numpy as np
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from baselines import GridSearch, PrunedTPESearch, RandomSearch, TPESearch
from bench.contract.errors import BenchError
from bench.contract.method import FINISHED, Method
from bench.contract.plugins import available_methods, method_class
from bench.testing import CHECKS, check_method, method_checks, parametrize_with_checks

EXAMPLE = Path(__file__).parent / "plugin_example"
sys.path.insert(0, str(EXAMPLE))  # the example plugins, importable without installing
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
    if not cls.reports_validation:  # pruners replay only on records with epoch reports
        assert summary["replayed_ok"] == summary["replayed"] >= 1


def test_checks_are_named_for_pytest_ids():
    checks = method_checks(UniformRandom, {"trials": 4})
    assert [c.name for c in checks] == list(CHECKS)
    assert "UniformRandom-replays_on_recorded_runs" in [c.id for c in checks]


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
