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
    """How many of the N training labels the task's label noise made wrong (if it has
    any), and whether the search split's validation labels were kept clean."""
    if data.flipped is None:
        return {}
    clean = {"label_noise_clean_validation": True} if data.split_indices is not None else {}
    return {"label_noise_flipped": len(data.flipped)} | clean


def trial_device(gpus: float) -> str:
    """The GPU Ray assigned (it sets CUDA_VISIBLE_DEVICES), else the CPU. A trial holding a
    GPU share where torch sees no CUDA (a cluster given fake GPUs, ``ray start --num-gpus``
    on a machine without one, as the tests do) trains on the CPU: the records say so
    (``info["device"]``). A fraction below 1 caps this process's share of the GPU's memory,
    so that running out of it is this trial's failure, never a neighbour's."""
    import torch

    if gpus <= 0 or not torch.cuda.is_available():
        return "cpu"
    if gpus < 1:  # once per worker process; Ray packs floor(1 / gpus) of them on a GPU
        torch.cuda.set_per_process_memory_fraction(gpus, torch.device("cuda"))
    return "cuda"


def out_of_memory(err: BaseException, gpus: float) -> str:
    """A GPU out-of-memory error in the user's words: the share it ran out at."""
    import torch

    share = f"its {gpus:g} share" if gpus < 1 else f"its {gpus:g} GPU(s)"
    total = torch.cuda.get_device_properties(torch.device("cuda")).total_memory / 2**30
    first = (str(err).strip().splitlines() or [""])[0]
    return (f"out of GPU memory at {share} ({total * min(gpus, 1):.1f} of {total:.1f} GiB): "
            f"{first}")


def device_info(gpus: float, device: str) -> dict:
    """Where a trial holding a GPU share trained (CPU-only trials' records stay as they were)."""
    return {"device": device} if gpus > 0 else {}


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
    device = "cpu"
    try:
        inject_at_start(request.fault)
        device = trial_device(spec.gpus)
        data = task_data(spec.task, spec.seed, device)
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
            info=json.dumps(fitted.info | noise_info(data) | device_info(spec.gpus, device),
                            default=float), node=node)
    except torch.cuda.OutOfMemoryError as err:  # at its own share (trial_device)
        torch.cuda.empty_cache()  # what it held goes back for the worker's next trial
        final = FinalResult(S.FAILED, node=node, error=out_of_memory(err, spec.gpus)[:500],
                            trace=traceback.format_exc()[-2000:])
    except Exception as err:  # noqa: BLE001 - a failing trial (MemoryError too) is a result
        final = FinalResult(S.FAILED, node=node, error=f"{type(err).__name__}: {err}"[:500],
                            trace=traceback.format_exc()[-2000:])
    return dataclasses.replace(final, worker_wall_s=time.perf_counter() - started)
