"""Speed benchmarks (commands that print figures, never tests).

``loop_benchmark``: images per second of the harness's training loop (``fine_tune``) against
a bare PyTorch loop doing the same work (same model, batch, image size, optimiser, schedule,
clipping, penalty), measured alternately so both see the same machine state.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bench.contract import schema as S
from bench.contract.protocol import DEFAULT_BACKEND
from bench.records.tables import read_table
from bench.training.train import TrainConfig, batch_stream, fine_tune
from bench.zoo.regularizers import L2SP, Regularizer
from bench.zoo.task import Task

CASES = (("efficientnet-lite0", 32), ("efficientnet-lite0", 64), ("small-cnn", 28))


def _bare_loop(net, regularizer, x, y, config: TrainConfig) -> None:
    """The reference: the same training written plainly, as a user would."""
    model = net.model
    model.train()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    centres = [(p, net.mu0[n]) for n, p in net.backbone_parameters()]
    heads = [p for _, p in net.head_parameters()]
    g = torch.Generator().manual_seed(config.seed)
    batches = batch_stream(len(x), config.batch_size, g)
    for _ in range(config.steps):
        idx = next(batches)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if isinstance(regularizer, L2SP):
            loss = loss + 0.5 * regularizer.alpha * sum(((p - m) ** 2).sum() for p, m in centres)
            loss = loss + 0.5 * regularizer.beta * sum((p ** 2).sum() for p in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()


def _harness_loop(net, regularizer, x, y, config: TrainConfig) -> None:
    fine_tune(net, regularizer, (x, y), config)


def _time(loop, data, regularizer, config) -> float:
    net = data.network()
    x, y = data.train
    loop(net, regularizer, x, y, TrainConfig(lr=config.lr, steps=3, batch_size=config.batch_size))
    started = time.perf_counter()
    loop(net, regularizer, x, y, config)
    return time.perf_counter() - started


def loop_benchmark(steps: int = 30, batch_size: int = 32, repeats: int = 3) -> list[dict]:
    """Print and return img/s of harness vs bare loop for each (backbone, size, penalty)."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch_size}, "
          f"{steps} steps, best of {repeats} alternating runs")
    print(f"{'backbone':20} {'px':>4} {'penalty':8} {'bare img/s':>11} {'harness img/s':>14} "
          f"{'time ratio':>11}")
    rows = []
    for backbone, size in CASES:
        task = Task("animal-mnist", 256, backbone, image_size=size)
        data = task.load(seed=0)
        for regularizer in (Regularizer(), L2SP(alpha=1e-3, beta=1e-3)):
            config = TrainConfig(lr=0.01, steps=steps, batch_size=batch_size,
                                 report_every=steps + 1)
            bare, harness = [], []
            for _ in range(repeats):
                bare.append(_time(_bare_loop, data, regularizer, config))
                harness.append(_time(_harness_loop, data, regularizer, config))
            images = steps * batch_size
            row = {"backbone": backbone, "image_size": size, "penalty": regularizer.name,
                   "bare_img_s": images / min(bare), "harness_img_s": images / min(harness),
                   "time_ratio": min(harness) / min(bare)}
            rows.append(row)
            print(f"{backbone:20} {size:4d} {regularizer.name:8} {row['bare_img_s']:11.1f} "
                  f"{row['harness_img_s']:14.1f} {row['time_ratio']:11.3f}", flush=True)
    return rows


def prefix_benchmark(steps: int = 30, batch_size: int = 32, repeats: int = 3,
                     n: int = 1000, trainable: tuple[int, ...] = (2, 0),
                     sizes: tuple[int, ...] = (32, 64)) -> list[dict]:
    """Print and return what caching a frozen prefix buys on EfficientNet-Lite0: the time
    of one L2-SP training step of the whole network against the top ``k`` blocks on cached
    prefix outputs, and the one-time cost of the prefix over ``n`` training images."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch_size}, "
          f"{steps} steps, best of {repeats}; prefix over N = {n} images once per seed")
    print(f"{'px':>4} {'trainable':>10} {'params':>9} {'step ms':>8} {'speed-up':>9} "
          f"{'prefix s':>9}")
    rows = []
    regularizer = L2SP(alpha=1e-3, beta=1e-3)
    config = TrainConfig(lr=0.01, steps=steps, batch_size=batch_size, report_every=steps + 1)
    for size in sizes:
        whole_ms = None
        for k in (None, *trainable):
            task = Task("animal-mnist", n, "efficientnet-lite0", image_size=size,
                        trainable_blocks=k)
            started = time.perf_counter()
            data = task.load(seed=0)
            load_s = time.perf_counter() - started
            if k is not None:  # the prefix's share of loading: the images alone, subtracted
                started = time.perf_counter()
                Task("animal-mnist", n, "efficientnet-lite0", image_size=size).load(seed=0)
                load_s -= time.perf_counter() - started
            times = [_time(_harness_loop, data, regularizer, config) for _ in range(repeats)]
            step_ms = 1000 * min(times) / steps
            whole_ms = whole_ms or step_ms
            params = sum(p.numel() for p in data.network().model.parameters())
            row = {"image_size": size, "trainable_blocks": k, "params": params,
                   "step_ms": step_ms, "speedup": whole_ms / step_ms,
                   "prefix_s": max(0.0, load_s) if k is not None else 0.0}
            rows.append(row)
            print(f"{size:4d} {'all' if k is None else k:>10} {params:9d} {step_ms:8.1f} "
                  f"{row['speedup']:8.1f}x {row['prefix_s']:9.1f}", flush=True)
    return rows


def overhead_shares(run_dir) -> dict:
    """Where a finished run's time went, as shares of its budget (wall x workers x what one
    trial is charged per second, in the budget's unit: its GPUs or its CPU cores).

    Useful = training + evaluation inside trials (a trial stopped at a report, pruned or
    over budget, counts what its last report measured). Harness overhead = Ray start + the time
    between trials (scheduling, workers idle while a method waits or the suite's last
    trials drain) + records. The time between trials is split in two: the drain, from each
    worker's last trial's end to the suite's end (the suite's last trials need fewer workers
    than the pool has), and the gaps before that. Trial set-up (model build, data
    preparation, the worker's first start) is shown beside it.
    """
    import json
    from pathlib import Path

    from bench.contract.errors import BenchError

    try:
        meta = json.loads((Path(run_dir) / S.METADATA_FILE).read_text())
        trials = read_table(Path(run_dir) / S.TRIALS_FILE)
    except (OSError, ValueError):
        raise BenchError(f"{run_dir} is not a run directory (no readable {S.METADATA_FILE} "
                         f"and {S.TRIALS_FILE})") from None
    if "suite_wall_s" not in meta or "ray_start_s" not in meta:
        raise BenchError(f"{run_dir} holds no finished suite run (a replay, or a run that "
                         "was stopped): nothing to split")
    from bench.records.rundir import metadata_unit

    budget = meta["budget"]
    unit = metadata_unit(meta)  # None: a run from before units charged CPUs + GPUs
    res = {"gpu": budget["gpus_per_worker"], "cpu": budget["cpus_per_worker"]}.get(
        unit, budget["cpus_per_worker"] + budget["gpus_per_worker"])
    total = meta["suite_wall_s"] * budget["workers"] * res
    useful = float((trials[S.TRAIN_S].fillna(0) + trials[S.EVAL_S].fillna(0)).sum()) * res
    in_trials = float(trials[S.RESOURCE_S].sum())
    ray_start = meta["ray_start_s"] * budget["workers"] * res
    drain = _drain_s(trials, budget["workers"], meta["suite_wall_s"]) * res
    return {"workers": budget["workers"], "trials": len(trials), "wall_s": meta["suite_wall_s"],
            "trials_per_hour": len(trials) / meta["suite_wall_s"] * 3600,
            "ray_start_share": ray_start / total,
            "between_trials_share": (total - in_trials - ray_start) / total,
            "drain_share": drain / total,
            "trial_setup_share": (in_trials - useful) / total,
            "useful_share": useful / total}


def _drain_s(trials, workers: int, wall_s: float) -> float:
    """Worker-seconds from each worker's last trial's end to the suite's end. Trials are
    laid on workers in the order they started, each on the worker free soonest (a worker
    takes its next trial only once its last one ended)."""
    free = [0.0] * workers
    for started, ended in sorted(zip(trials[S.STARTED_S], trials[S.ENDED_S])):
        free[free.index(min(free))] = ended
    return sum(max(0.0, wall_s - end) for end in free)


def print_overhead(name: str, rows: list[dict]) -> None:
    print(f"suite {name}; torch {torch.__version__}")
    print(f"{'workers':>7} {'trials':>6} {'wall s':>8} {'trials/h':>9} {'Ray start':>10} "
          f"{'between':>8} {'(drain)':>8} {'harness':>8} {'setup':>7} {'useful':>7}")
    for r in rows:
        harness = r["ray_start_share"] + r["between_trials_share"]
        print(f"{r['workers']:7d} {r['trials']:6d} {r['wall_s']:8.1f} {r['trials_per_hour']:9.1f} "
              f"{r['ray_start_share']:10.1%} {r['between_trials_share']:8.1%} "
              f"{r['drain_share']:8.1%} {harness:8.1%} {r['trial_setup_share']:7.1%} "
              f"{r['useful_share']:7.1%}")
    if len(rows) > 1:
        print(f"throughput {rows[-1]['workers']} vs {rows[0]['workers']} workers: "
              f"{rows[-1]['trials_per_hour'] / rows[0]['trials_per_hour']:.2f}x")


def harness_benchmark(suite_path: str, workers: tuple[int, ...] = (1, 2),
                      backend: str = DEFAULT_BACKEND) -> list[dict]:
    """Run a suite once per pool size (1 CPU per worker) on ``backend`` and print
    ``overhead_shares``."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from bench.driver.run import run_suite
    from bench.driver.suite import load_suite

    suite = load_suite(suite_path)
    rows = []
    for w in workers:
        budget = dataclasses.replace(suite.budget, workers=w, cpus_per_worker=1.0)
        with tempfile.TemporaryDirectory() as tmp:
            out = run_suite(dataclasses.replace(suite, budget=budget), Path(tmp) / "run",
                            progress=False, backend=backend)
            rows.append(overhead_shares(out))
    print_overhead(f"{suite.name}, backend {backend}", rows)
    return rows


REPLAY_STAGES = (("load", "load_s"), ("simulate", "simulate_s"), ("tables", "write_s"),
                 ("report+figures", "summary_s"))


def replay_benchmark(suite_path: str, out: str | None = None) -> dict:
    """Replay a suite as ``bench replay`` does (parse and check it, replay, report, figures)
    into ``out`` (default: a temporary directory) and print the wall time of each stage
    and the simulated trials per second. "load" counts reading the suite, checking it
    against its records and starting every method on every task and seed."""
    import tempfile
    from pathlib import Path

    from bench.analysis.summary import plot_and_report
    from bench.driver.forked import default_jobs
    from bench.driver.replay_suite import run_replay
    from bench.driver.suite import load_suite

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(out) if out else Path(tmp) / "replay"
        started = time.perf_counter()
        suite = load_suite(suite_path, replay_only=True)
        stages: dict = {}
        parsed = time.perf_counter()
        run_replay(suite, target, progress=False, stages=stages)
        stages["load_s"] += parsed - started
        clock = time.perf_counter()
        stages |= plot_and_report(target)[2]  # side by side where the cores allow
        stages["summary_s"] = time.perf_counter() - clock
        stages["total_s"] = time.perf_counter() - started
    print(f"replay of suite {suite.name}: {stages['trials']} simulated trials, "
          f"{stages['trials'] / stages['simulate_s']:.0f} trials/s while simulating, "
          f"{default_jobs()} processes")
    print(f"{'stage':15} {'wall s':>8} {'share':>6}")
    for name, key in REPLAY_STAGES:
        print(f"{name:15} {stages[key]:8.1f} {stages[key] / stages['total_s']:6.1%}")
    print(f"{'total':15} {stages['total_s']:8.1f}")
    print(f"(report {stages['report_s']:.1f} s and figures {stages['figures_s']:.1f} s, "
          "drawn side by side where the cores allow)")
    return stages
