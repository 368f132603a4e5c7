"""Checks a suite's tasks by trying them, before anything is written: N fits the data set
(at most its training pool, at least one example per class), the backbone takes the image
size (one training step on the real network), and the compute cap holds at least one
trial (its steps, timed here, are a lower bound on what a trial costs)."""

from __future__ import annotations

import contextlib
import io
import time

from bench.contract.errors import BenchError
from bench.driver.suite import Suite
from bench.zoo.task import Task

TIMED_STEPS = 3  # after one warm-up step; the fastest is kept


def step_seconds(task: Task, threads: int, batch_size: int | None = None) -> float:
    """Seconds of the fastest training step (forward, backward, SGD) of ``task``'s network
    at its image size and ``batch_size`` (default: the task's) on this machine's CPU with
    ``threads`` threads."""
    import torch

    from bench.zoo.backbones import backbone_info, build_backbone
    from bench.zoo.data import load_dataset

    info = backbone_info(task.backbone)
    classes = load_dataset(task.dataset).num_classes
    with contextlib.redirect_stdout(io.StringIO()):  # the weights package prints
        net = build_backbone(task.backbone, classes)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batch = batch_size or task.batch_size
        x = torch.randn(batch, info.channels, task.image_size, task.image_size)
        y = torch.randint(0, classes, (batch,))
        optimizer = torch.optim.SGD(net.model.parameters(), lr=1e-4)
        net.model.train()
        times = []
        for _ in range(TIMED_STEPS + 1):
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net.model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
    except RuntimeError as err:  # e.g. the feature map shrinks to nothing
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BenchError(f"task {task.name}: backbone {task.backbone} cannot take "
                         f"image_size {task.image_size}: {first}") from None
    finally:
        torch.set_num_threads(before)
    return min(times[1:])


def check_data_fits(task: Task) -> None:
    """N is at most the data set's training pool and at least its number of classes (the
    subsample is stratified: a class without an example could never be learned)."""
    from bench.zoo.data import load_dataset

    task.check_data()
    classes = load_dataset(task.dataset).num_classes
    if task.n < classes:
        raise BenchError(f"task {task.name}: n = {task.n} is smaller than the {classes} "
                         f"classes of {task.dataset}; every class needs an example")


def check_tasks(suite: Suite) -> None:
    """Refuse a task whose N does not fit its data, whose backbone cannot take its image
    size, or whose cap is smaller than one trial (timed only for CPU budgets: the
    driver's CPU says nothing of a GPU, so a GPU task's network takes one image of its
    size, a check not a timing: a ViT-B/16 batch of 128 at 224 px on the driver's CPU
    would take minutes)."""
    budget = suite.budget
    threads = max(1, int(budget.cpus_per_worker))
    timed: dict[tuple, float] = {}
    for task in suite.tasks:
        check_data_fits(task)
    for task in suite.tasks:
        key = (task.backbone, task.image_size, task.batch_size, task.dataset)
        if key not in timed:
            timed[key] = step_seconds(task, threads,
                                      batch_size=1 if budget.gpus_per_worker > 0 else None)
        if budget.gpus_per_worker > 0:
            continue
        one_trial = task.steps * timed[key] * budget.charge_rate
        cap = task.cap_s or budget.cap_s
        if cap < one_trial:
            raise BenchError(f"task {task.name}: cap_s {cap:g} {budget.unit_label} is smaller "
                             f"than one trial, whose {task.steps} steps take at least "
                             f"{one_trial:.3g} {budget.unit_label} here (timed)")
