"""One trial, as a worker runs it: fit the method at a configuration, evaluate, and emit
a final record. No Ray here: the Ray runner and the inline runner both call it."""

from __future__ import annotations

import functools
import json
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from bench import schema as S
from bench.faults import inject_at_start, poisoned
from bench.method import FitData, Method
from bench.metrics import evaluate
from bench.task import Task


@functools.lru_cache(maxsize=4)
def task_data(task: Task, seed: int, device: str = "cpu"):
    """Prepared tensors, kept in the (reused) worker process across trials."""
    return task.load(seed).to(device)


def noise_info(data) -> dict:
    """How many of the N training labels the task's label noise flipped (if it has any)."""
    return {} if data.flipped is None else {"label_noise_flipped": len(data.flipped)}


def trial_device(gpus: float) -> str:
    """The GPU Ray assigned (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch

    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class TrialSpec:
    task: Task
    seed: int
    method: Method
    threads: int
    gpus: float = 0.0


def execute_trial(config: dict, spec: TrialSpec, emit: Callable[[dict], bool]) -> dict:
    """Fit and evaluate one trial; per-epoch reports go to ``emit`` (True: stop). Returns
    the final record; a failure is a record too, never an exception."""
    import torch

    started = time.perf_counter()
    torch.set_num_threads(spec.threads)
    kind, hp, fault = config["kind"], config["hp"], config.get("fault")
    final = {"phase": "final", S.NODE: socket.gethostname()}
    try:
        inject_at_start(fault)
        data = task_data(spec.task, spec.seed, trial_device(spec.gpus))
        make_network = poisoned(data.network, fault)
        if kind == S.SEARCH:
            train, held_out = data.split()
            fit_data = FitData(spec.task, spec.seed, train, held_out, data.num_classes,
                               make_network)
        else:  # retrain or learned run: all N, no validation data; scored on the test set
            held_out = data.test
            fit_data = FitData(spec.task, spec.seed, data.train, None, data.num_classes,
                               make_network)

        fit_started = time.perf_counter()

        def report(step: int, metrics: dict) -> bool:
            # what was measured so far travels with every report: a trial stopped at one
            # (pruned, over budget) sends no final record
            measured = {S.STEPS_DONE: step, S.FIT_S: time.perf_counter() - fit_started}
            return bool(emit({"phase": "epoch", S.STEP: step, S.NODE: final[S.NODE],
                              **measured, **metrics, S.REPORTED: sorted(metrics)}))

        fitted = spec.method.fit(fit_data, hp, report)
        eval_started = time.perf_counter()
        scores = evaluate(fitted.network.model, *held_out)
        eval_s = fitted.eval_s + time.perf_counter() - eval_started
        prefix = "val" if kind == S.SEARCH else "test"
        final |= {
            S.STATUS: S.OK, f"{prefix}_nll": scores["nll"], f"{prefix}_acc": scores["acc"],
            S.OBJECTIVE: fitted.objective, S.STEPS_DONE: fitted.steps_done,
            S.TRAIN_S: fitted.train_s, S.EVAL_S: eval_s,
            S.INFO: json.dumps(fitted.info | noise_info(data), default=float),
        }
    except Exception as err:  # noqa: BLE001 - a failing trial (MemoryError too) is a record
        final |= {S.STATUS: S.FAILED, S.ERROR: f"{type(err).__name__}: {err}"[:500],
                  "traceback": traceback.format_exc()[-2000:]}
    final["worker_wall_s"] = time.perf_counter() - started
    return final
