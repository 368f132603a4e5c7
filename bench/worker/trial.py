"""One trial, as a worker runs it: fit the method at the requested configuration,
evaluate, and return the final result (``bench.contract.protocol``). No Ray here: the Ray runner
and the inline runner both call it."""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from bench.contract import schema as S
from bench.contract.method import FitData, Method
from bench.contract.protocol import EpochReport, FinalResult, TrialRequest
from bench.training.metrics import evaluate
from bench.worker.faults import inject_at_start, poisoned
from bench.zoo.task import Task


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
    """What a worker needs beside the request: the campaign's task, seed and (unstarted)
    method, and the resources its trials hold."""

    task: Task
    seed: int
    method: Method
    threads: int
    gpus: float = 0.0


def execute_trial(request: TrialRequest, spec: TrialSpec,
                  emit: Callable[[EpochReport], bool]) -> FinalResult:
    """Fit and evaluate one trial; its epoch reports go to ``emit`` (True: stop). A
    failure is a result too (with its traceback), never an exception."""
    import torch

    from bench.worker.fit import standard_fit  # the worker's loop: not in the driver

    started = time.perf_counter()
    torch.set_num_threads(spec.threads)
    node = socket.gethostname()
    try:
        inject_at_start(request.fault)
        data = task_data(spec.task, spec.seed, trial_device(spec.gpus))
        make_network = poisoned(data.network, request.fault)
        if request.kind == S.SEARCH:
            train, held_out = data.split()
            fit_data = FitData(spec.task, spec.seed, train, held_out, data.num_classes,
                               make_network, standard_fit)
        else:  # retrain or learned run: all N, no validation data; scored on the test set
            held_out = data.test
            fit_data = FitData(spec.task, spec.seed, data.train, None, data.num_classes,
                               make_network, standard_fit)

        fit_started = time.perf_counter()

        def report(step: int, values: dict) -> bool:
            # what was measured so far travels with every report: a trial stopped at one
            # (pruned, over budget) sends no final result
            return bool(emit(EpochReport(step, values, steps_done=step,
                                         fit_s=time.perf_counter() - fit_started, node=node)))

        fitted = spec.method.fit(fit_data, request.hp, report)
        eval_started = time.perf_counter()
        scores = evaluate(fitted.network.model, *held_out)
        eval_s = fitted.eval_s + time.perf_counter() - eval_started
        prefix = "val" if request.kind == S.SEARCH else "test"
        final = FinalResult(
            S.OK, {f"{prefix}_nll": scores["nll"], f"{prefix}_acc": scores["acc"],
                   S.OBJECTIVE: fitted.objective},
            steps_done=fitted.steps_done, train_s=fitted.train_s, eval_s=eval_s,
            info=json.dumps(fitted.info | noise_info(data), default=float), node=node)
    except Exception as err:  # noqa: BLE001 - a failing trial (MemoryError too) is a result
        final = FinalResult(S.FAILED, node=node, error=f"{type(err).__name__}: {err}"[:500],
                            trace=traceback.format_exc()[-2000:])
    return dataclasses.replace(final, worker_wall_s=time.perf_counter() - started)
