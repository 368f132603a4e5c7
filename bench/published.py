"""The DE-ELBo study's published run records (bench/published/, see its README) in the
harness's record schema, so that curves, plots, reports and replays read them like any run.

Each (data set, backbone, N) is a task named like ``cifar10-resnet50-N100``; the seed is
the study's ``random_state``; a configuration is ``{"lr": lr_0, "tau": ...}`` (ResNet-50)
or ``{"lr": lr_0, "alpha": ..., "beta": ...}`` (ConvNeXt-Tiny). Tuned runs become search
trials (validation scores), retrained runs become retrains of the search trial with the
same configuration (test scores); runtime (seconds on one A100) is wall and resource time.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files

import pandas as pd

from bench import schema as S
from bench.errors import BenchError
from bench.records import frame

METHOD = "recorded"
SOURCES = {  # name -> (file stem, file suffix, BO trace file or None)
    "cifar10-resnet50": ("CIFAR-10", "", None),
    "pets-resnet50": ("Oxford-IIIT_Pet", "", None),
    "cifar10-convnext": ("CIFAR-10", "_ConvNeXt_Tiny", "CIFAR-10_ConvNeXt-Tiny_BO.csv"),
    "pets-convnext": ("Oxford-IIIT_Pet", "_ConvNeXt_Tiny", "Pet-37_ConvNeXt-Tiny_BO.csv"),
}
_PAIR = re.compile(r"(lr_0|n|random_state|tau|alpha|beta)=([^_]+)")
_NAMES = {"lr_0": "lr"}


def _read(name: str) -> pd.DataFrame:
    return pd.read_csv(files("bench") / "published" / name)


def config_key(config: dict[str, float]) -> str:
    """The canonical text of a configuration: how recorded runs are matched."""
    return json.dumps({k: float(v) for k, v in sorted(config.items())})


def _parse(model_name: str) -> dict[str, float]:
    pairs = dict(_PAIR.findall(model_name))
    return {_NAMES.get(k, k): float(v) for k, v in pairs.items()
            if k not in ("n", "random_state")}


def _table(source: str, kind: str) -> pd.DataFrame:
    stem, suffix, _ = SOURCES[source]
    raw = _read(f"{kind}_{stem}{suffix}.csv")
    label = raw["method"] if "method" in raw else raw["criterion"]
    raw = raw[label == "l2-sp"].copy()  # the CIFAR file also holds other criteria
    raw["config"] = [config_key(_parse(m)) for m in raw["model_name"]]
    raw["task"] = [f"{source}-N{n}" for n in raw["n"]]
    raw["epoch_s"] = raw["avg_sec/epoch"] if "avg_sec/epoch" in raw else float("nan")
    return raw


def published_runs(source: str) -> pd.DataFrame:
    """Every tuned and retrained run of ``source`` (a key of ``SOURCES``) as trials."""
    if source not in SOURCES:
        raise BenchError(f"unknown published records {source!r}; known: {', '.join(SOURCES)}")
    tuned, retrained = _table(source, "tuned"), _table(source, "retrained")
    rows = []
    for (task, seed), runs in tuned.groupby(["task", "random_state"], sort=True):
        ended = runs["runtime"].cumsum()  # the file's order, one run after another
        for run, end in zip(runs.itertuples(), ended):
            rows.append({S.SUITE: f"published:{source}", S.TASK: task, S.METHOD: METHOD,
                         S.SEED: int(seed), S.TRIAL_ID: run.config, S.KIND: S.SEARCH,
                         S.STATUS: S.OK, S.CONFIG: run.config, S.VAL_NLL: run.val_nll,
                         S.VAL_ACC: run.val_acc, S.STARTED_S: end - run.runtime, S.ENDED_S: end,
                         S.WALL_S: run.runtime, S.RESOURCE_S: run.runtime,
                         S.GPU_S: run.runtime,
                         S.INFO: json.dumps({"epoch_s": None if pd.isna(run.epoch_s)
                                             else float(run.epoch_s)})})
    for run in retrained.itertuples():
        rows.append({S.SUITE: f"published:{source}", S.TASK: run.task, S.METHOD: METHOD,
                     S.SEED: int(run.random_state), S.TRIAL_ID: f"retrain {run.config}",
                     S.KIND: S.RETRAIN, S.STATUS: S.OK, S.CONFIG: run.config,
                     S.RETRAIN_OF: run.config, S.TEST_ACC: run.test_acc,
                     S.TEST_NLL: run.test_nll, S.WALL_S: run.runtime,
                     S.RESOURCE_S: run.runtime, S.GPU_S: run.runtime})
    return frame(rows, S.TRIAL_COLUMNS)


def published_bo(source: str, label: str = "bo (published)") -> pd.DataFrame:
    """The study's Bayesian-optimisation traces as trials of one more method.

    Each BO seed of a (task, random_state) is one seed of the method (numbered
    random_state * 100 + BO seed). Every iteration is a search trial charged its share of
    the cumulative runtime; each new incumbent gets a retrain row carrying the trace's
    test scores at no extra cost, since the trace does not say what its retraining cost.
    """
    name = SOURCES[source][2]
    if name is None:
        raise BenchError(f"published records {source!r} have no BO trace")
    trace = _read(name)
    rows = []
    for (n, rs, bo), runs in trace.groupby(["n", "random_state", "seed"], sort=True):
        runs = runs.sort_values("n_iter")
        seed, task = int(rs) * 100 + int(bo), f"{source}-N{int(n)}"
        previous, last_acc = 0.0, None
        for run in runs.itertuples():
            config = config_key({"lr": run.lr_0, "alpha": run.alpha, "beta": run.beta})
            trial = f"bo{int(bo)}-{int(run.n_iter)}"
            rows.append({S.SUITE: f"published:{source}", S.TASK: task, S.METHOD: label,
                         S.SEED: seed, S.TRIAL_ID: trial, S.KIND: S.SEARCH, S.STATUS: S.OK,
                         S.CONFIG: config, S.VAL_NLL: run.val_nll, S.VAL_ACC: run.val_acc,
                         S.ENDED_S: run.runtime, S.WALL_S: run.runtime - previous,
                         S.RESOURCE_S: run.runtime - previous})
            if run.test_acc != last_acc:
                rows.append({S.SUITE: f"published:{source}", S.TASK: task, S.METHOD: label,
                             S.SEED: seed, S.TRIAL_ID: f"retrain {trial}", S.KIND: S.RETRAIN,
                             S.STATUS: S.OK, S.CONFIG: config, S.RETRAIN_OF: trial,
                             S.TEST_ACC: run.test_acc, S.TEST_NLL: run.test_nll,
                             S.ENDED_S: run.runtime, S.WALL_S: 0.0, S.RESOURCE_S: 0.0})
                last_acc = run.test_acc
            previous = run.runtime
    return frame(rows, S.TRIAL_COLUMNS)
