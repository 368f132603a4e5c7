"""The DE-ELBo study's published run records (``published_csv/`` beside this module, see
its README) in the harness's record schema, so that curves, plots, reports and replays read
them like any run.

A record set is named ``published:<dataset>-<model>`` (``RECORD_SETS``): ten 144-configuration
L2-SP grids, the earlier 24-configuration ResNet-50 grids (``-v1``) and the ConvNeXt-Tiny
grid with each run's conditional log marginal likelihood (``cifar10-convnext-clml``). Each
(record set, N) is a task named like ``cifar10-resnet50-N100``; the seed is the study's
``random_state``; a configuration is ``{"lr": lr_0, "alpha": ..., "beta": ...}`` (v1:
``{"lr": lr_0, "tau": ...}``). Tuned runs become search trials (validation scores),
retrained runs become retrains of the search trial with the same configuration (test
scores). Runtimes are seconds on one A100: wall, resource and GPU seconds alike
(``COMPUTE_UNIT``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import pandas as pd

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.records.tables import frame, rows_of

METHOD = "recorded"
#: what a published runtime measures; replays of these records say so in their metadata
COMPUTE_UNIT = {"compute_unit": S.GPU_S, "compute_label": "A100 GPU-seconds"}
PREFIX = "published:"


@dataclass(frozen=True)
class RecordSet:
    """One published grid: its files (``tuned_<stem>.csv`` + ``retrained_<stem>.csv``, one
    stem per N range), what was trained on what, and its BO trace if the study ran one."""

    name: str
    stems: tuple[str, ...]
    dataset: str
    model: str
    bo: str | None = None
    clml: bool = False  # the runs carry val_clml, a validation-free selection score


RECORD_SETS = {r.name: r for r in (
    RecordSet("cifar10-resnet50", ("CIFAR-10_ResNet_50",), "CIFAR-10", "ResNet-50",
              "CIFAR-10_BO.csv"),
    RecordSet("cifar10-convnext", ("CIFAR-10_ConvNeXt_Tiny",), "CIFAR-10", "ConvNeXt-Tiny",
              "CIFAR-10_ConvNeXt-Tiny_BO.csv"),
    RecordSet("cifar10-vit", ("CIFAR-10_ViT_B_16",), "CIFAR-10", "ViT-B/16",
              "CIFAR-10_ViT_B_16_BO.csv"),
    RecordSet("pets-resnet50", ("Oxford-IIIT_Pet_ResNet_50",), "Oxford-IIIT Pet", "ResNet-50"),
    RecordSet("pets-convnext", ("Oxford-IIIT_Pet_ConvNeXt_Tiny",), "Oxford-IIIT Pet",
              "ConvNeXt-Tiny", "Pet-37_ConvNeXt-Tiny_BO.csv"),
    RecordSet("pets-vit", ("Oxford-IIIT_Pet_ViT_B_16",), "Oxford-IIIT Pet", "ViT-B/16"),
    RecordSet("flowers-resnet50", ("Flowers_102_ResNet_50",), "Flowers-102", "ResNet-50"),
    RecordSet("flowers-convnext", ("Flowers_102_ConvNeXt_Tiny",), "Flowers-102",
              "ConvNeXt-Tiny", "Flower-102_ConvNeXt-Tiny_BO.csv"),
    RecordSet("flowers-vit", ("Flowers_102_ViT_B_16",), "Flowers-102", "ViT-B/16"),
    RecordSet("agnews-bert", ("AG_News_BERT-base",), "AG News", "BERT-base",
              "News-4_BERT-base_BO.csv"),
    # the earlier ResNet-50 grid (lr_0 x one strength tau), which earlier reference numbers used
    RecordSet("cifar10-resnet50-v1", ("CIFAR-10_ResNet_50_v1",), "CIFAR-10", "ResNet-50"),
    RecordSet("pets-resnet50-v1", ("Oxford-IIIT_Pet_ResNet_50_v1",), "Oxford-IIIT Pet",
              "ResNet-50"),
    RecordSet("cifar10-convnext-clml", ("CIFAR-10_ConvNeXt-Tiny_CLML",
                                        "CIFAR-10_ConvNeXt-Tiny_CLML2"), "CIFAR-10",
              "ConvNeXt-Tiny", clml=True),
)}
SOURCES = RECORD_SETS  # the name earlier code imported
_PAIR = re.compile(r"(lr_0|n|random_state|tau|alpha|beta)=([^_]+)")
_NAMES = {"lr_0": "lr"}


def record_set(name: str) -> RecordSet:
    """The record set ``name`` (with or without ``published:``); unknown: BenchError."""
    name = name.removeprefix(PREFIX)
    if name not in RECORD_SETS:
        raise BenchError(f"unknown published records {name!r}; known: {', '.join(RECORD_SETS)}")
    return RECORD_SETS[name]


def _read(name: str) -> pd.DataFrame:
    return pd.read_csv(files("bench.records") / "published_csv" / name)


def config_key(config: dict[str, float]) -> str:
    """The canonical text of a configuration: how recorded runs are matched."""
    return json.dumps({k: float(v) for k, v in sorted(config.items())})


def _parse(model_name: str) -> dict[str, float]:
    pairs = dict(_PAIR.findall(model_name))
    return {_NAMES.get(k, k): float(v) for k, v in pairs.items()
            if k not in ("n", "random_state")}


def _table(records: RecordSet, kind: str) -> pd.DataFrame:
    raw = pd.concat([_read(f"{kind}_{stem}.csv") for stem in records.stems], ignore_index=True)
    label = raw["method"] if "method" in raw else raw["criterion"]
    raw = raw[label == "l2-sp"].copy()  # the v1 CIFAR file also holds other criteria
    raw["config"] = [config_key(_parse(m)) for m in raw["model_name"]]
    raw["task"] = [f"{records.name}-N{n}" for n in raw["n"]]
    raw["epoch_s"] = raw["avg_sec/epoch"] if "avg_sec/epoch" in raw else float("nan")
    return raw


def _number(value) -> float | None:
    return None if pd.isna(value) else float(value)


@lru_cache(maxsize=None)
def _published_runs(name: str) -> pd.DataFrame:
    records = record_set(name)
    tuned, retrained = _table(records, "tuned"), _table(records, "retrained")
    suite = PREFIX + records.name
    rows = []
    # each (task, seed)'s runs in the file's order, one after another; its rows read at once
    tuned = tuned.sort_values(["task", "random_state"], kind="stable")
    for (task, seed), runs in itertools.groupby(rows_of(tuned),
                                                key=lambda r: (r["task"], r["random_state"])):
        end = 0.0
        for run in runs:
            end += run["runtime"]
            info = {"epoch_s": _number(run["epoch_s"])}
            if records.clml:
                info["val_bma_acc"] = _number(run["val_bma_acc"])
            rows.append({S.SUITE: suite, S.TASK: task, S.METHOD: METHOD,
                         S.SEED: int(seed), S.TRIAL_ID: run["config"], S.KIND: S.SEARCH,
                         S.STATUS: S.OK, S.CONFIG: run["config"], S.VAL_NLL: run["val_nll"],
                         S.VAL_ACC: run["val_acc"], S.VAL_CLML: run.get("val_clml"),
                         S.STARTED_S: end - run["runtime"], S.ENDED_S: end,
                         S.WALL_S: run["runtime"], S.RESOURCE_S: run["runtime"],
                         S.GPU_S: run["runtime"], S.INFO: json.dumps(info)})
    for run in rows_of(retrained):
        info = ({"test_clml": _number(run["test_clml"]),
                 "test_bma_acc": _number(run["test_bma_acc"])} if records.clml else None)
        rows.append({S.SUITE: suite, S.TASK: run["task"], S.METHOD: METHOD,
                     S.SEED: int(run["random_state"]), S.TRIAL_ID: f"retrain {run['config']}",
                     S.KIND: S.RETRAIN, S.STATUS: S.OK, S.CONFIG: run["config"],
                     S.RETRAIN_OF: run["config"], S.TEST_ACC: run["test_acc"],
                     S.TEST_NLL: run["test_nll"], S.WALL_S: run["runtime"],
                     S.RESOURCE_S: run["runtime"], S.GPU_S: run["runtime"],
                     S.INFO: info and json.dumps(info)})
    return frame(rows, S.TRIAL_COLUMNS)


def published_runs(name: str) -> pd.DataFrame:
    """Every tuned and retrained run of record set ``name`` as trials (a copy)."""
    return _published_runs(record_set(name).name).copy()


def published_bo(name: str, label: str = "bo (published)") -> pd.DataFrame:
    """The study's Bayesian-optimisation traces as trials of one more method.

    Each BO seed of a (task, random_state) is one seed of the method (numbered
    random_state * 100 + BO seed). Every iteration is a search trial charged its share of
    the cumulative runtime; each new incumbent gets a retrain row carrying the trace's
    test scores at no extra cost, since the trace does not say what its retraining cost.
    Where a trace has no test score for its incumbent (test accuracy 0 and NLL inf, in the
    ViT-B/16 traces) there is no retrain row: the curve keeps the last scored incumbent.
    """
    records = record_set(name)
    if records.bo is None:
        raise BenchError(f"published records {records.name!r} have no BO trace; those with one: "
                         + ", ".join(r.name for r in RECORD_SETS.values() if r.bo))
    trace = _read(records.bo)
    suite = PREFIX + records.name
    rows = []
    for (n, rs, bo), runs in trace.groupby(["n", "random_state", "seed"], sort=True):
        runs = runs.sort_values("n_iter")
        seed, task = int(rs) * 100 + int(bo), f"{records.name}-N{int(n)}"
        previous, last_acc = 0.0, None
        for run in runs.itertuples():
            config = config_key({"lr": run.lr_0, "alpha": run.alpha, "beta": run.beta})
            trial = f"bo{int(bo)}-{int(run.n_iter)}"
            cost = run.runtime - previous
            rows.append({S.SUITE: suite, S.TASK: task, S.METHOD: label,
                         S.SEED: seed, S.TRIAL_ID: trial, S.KIND: S.SEARCH, S.STATUS: S.OK,
                         S.CONFIG: config, S.VAL_NLL: run.val_nll, S.VAL_ACC: run.val_acc,
                         S.STARTED_S: previous, S.ENDED_S: run.runtime, S.WALL_S: cost,
                         S.RESOURCE_S: cost, S.GPU_S: cost})
            # a new incumbent's scores; the ViT traces hold 0 and inf (none scored) in places
            if run.test_acc != last_acc and math.isfinite(run.test_nll):
                rows.append({S.SUITE: suite, S.TASK: task, S.METHOD: label,
                             S.SEED: seed, S.TRIAL_ID: f"retrain {trial}", S.KIND: S.RETRAIN,
                             S.STATUS: S.OK, S.CONFIG: config, S.RETRAIN_OF: trial,
                             S.TEST_ACC: run.test_acc, S.TEST_NLL: run.test_nll,
                             S.STARTED_S: run.runtime, S.ENDED_S: run.runtime, S.WALL_S: 0.0,
                             S.RESOURCE_S: 0.0, S.GPU_S: 0.0})
                last_acc = run.test_acc
            previous = run.runtime
    return frame(rows, S.TRIAL_COLUMNS)


def summary(name: str) -> dict:
    """What ``bench list records`` prints for one record set."""
    records = record_set(name)
    runs = _published_runs(records.name)
    search = runs[runs[S.KIND] == S.SEARCH]
    per_cell = search.groupby([S.TASK, S.SEED]).size()
    by_n: dict[int, list[int]] = {}
    for (task, _), count in per_cell.items():
        by_n.setdefault(int(task.rsplit("-N", 1)[1]), []).append(int(count))
    return {"name": PREFIX + records.name, "dataset": records.dataset, "model": records.model,
            "ns": sorted(by_n), "seeds": sorted(int(s) for s in search[S.SEED].unique()),
            "configurations": {n: (min(c), max(c)) for n, c in sorted(by_n.items())},
            "gpu_hours": float(runs[S.GPU_S].sum()) / 3600,
            "bo": records.bo is not None, "clml": records.clml}
