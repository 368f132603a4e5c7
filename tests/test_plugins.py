"""Method plugins: entry-point discovery and the check_method certificate."""

import importlib
import tempfile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from baselines import GridSearch, PrunedTPESearch, RandomSearch, TPESearch
from bench.errors import BenchError
from bench.method import FINISHED, Method
from bench.plugins import available_methods, method_class
from bench.testing import check_method

EXAMPLE = Path(__file__).parent / "plugin_example"


@pytest.mark.parametrize("cls, options", [
    (GridSearch, {"max_trials": 4}), (RandomSearch, {"trials": 4}),
    (TPESearch, {"trials": 4, "startup_trials": 2}),
    (PrunedTPESearch, {"trials": 5, "startup_trials": 2}),
])
def test_built_in_methods_pass_check_method(cls, options):
    summary = check_method(cls, options)
    assert summary["ok"] >= 2 and summary["retrains"] >= 1


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


def test_the_cap_stops_an_endless_method():
    summary = check_method(RandomSearch, {"trials": 10**6}, cap_s=1.0)
    assert summary["trials"] < 10**6


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


@pytest.mark.parametrize("cls, options, message", [
    (WritesFiles, {}, "wrote files"),
    (BadConstructor, {"trials": 3}, "store option 'trials'"),
    (OutOfSpace, {"trials": 3}, "lr=50.0 is outside"),
])
def test_check_method_catches_contract_breaches(cls, options, message):
    with pytest.raises(AssertionError, match=message):
        check_method(cls, options)


def test_check_method_catches_a_method_that_imports_ray(tmp_path, monkeypatch):
    (tmp_path / "uses_ray.py").write_text(
        "import ray\nfrom bench.method import Method, FINISHED\n"
        "class UsesRay(Method):\n    name = 'uses-ray'\n"
        "    def suggest(self, trial_id):\n        return FINISHED\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("uses_ray")
    with pytest.raises(AssertionError, match="uses Ray"):
        check_method(module.UsesRay)
