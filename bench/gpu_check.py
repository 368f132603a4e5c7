"""The GPU check (``bench benchmark gpu``): everything a machine with CUDA should show, in one
go and into one directory.

1. ``pytest -m gpu``: the device-parametrised tests on CUDA (``pytest-gpu.txt``);
2. the GPU quick suite (``suites/gpu-quick.toml``) packed four trials to a GPU at 0.25 each,
   with the GPU's utilisation sampled through NVML while it runs (``suite/``);
3. its grid alone at one trial per GPU, packed at 0.25, and packed in bf16 (``grid-*/``):
   grid trials per hour, packed against one per GPU (P8), bf16 against float32, and the
   test accuracy each reached;
4. ``summary.md`` and ``summary.json``: those figures, the device and the versions.

Each run directory is an ordinary run of ``bench run`` (its suite.toml is the text that ran:
the variants are made by rewriting the base suite's lines, never by changing the suite after
it is read), so ``bench report``/``plot`` read them as any other.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.contract import schema as S
from bench.contract.errors import BenchError

SAMPLE_EVERY_S = 0.5


@dataclass(frozen=True)
class Variant:
    """One run of the check: a directory name, what it is for, and how its suite differs."""

    name: str
    about: str
    workers: int
    gpus: float
    grid_only: bool
    bf16: bool = False


VARIANTS = (
    Variant("suite", "the whole suite packed at 0.25 (grid and learned methods)", 4, 0.25,
            False),
    Variant("grid-single", "the grid at one trial per GPU", 1, 1.0, True),
    Variant("grid-packed", "the grid packed four to a GPU at 0.25", 4, 0.25, True),
    Variant("grid-packed-bf16", "the grid packed at 0.25 in bf16", 4, 0.25, True, True),
)


def _replace_once(text: str, pattern: str, new: str, suite: str) -> str:
    """``pattern`` (a whole line) must occur exactly once: the variant is then exact."""
    found = re.findall(f"^{pattern}$", text, flags=re.M)
    if len(found) != 1:
        raise BenchError(f"{suite}: the GPU check rewrites the line {pattern!r}, which must "
                         f"occur once (found {len(found)})")
    return re.sub(f"^{pattern}$", new, text, flags=re.M)


def variant_text(text: str, variant: Variant, suite: str) -> str:
    """The base suite's text rewritten for ``variant``."""
    text = _replace_once(text, r"workers = \d+", f"workers = {variant.workers}", suite)
    text = _replace_once(text, r"gpus_per_worker = [0-9.]+",
                         f"gpus_per_worker = {variant.gpus:g}", suite)
    text = _replace_once(text, r'name = "[^"]*"', f'name = "gpu-check-{variant.name}"', suite)
    if variant.bf16:
        text = _replace_once(text, r"\[\[tasks\]\]", '[[tasks]]\nprecision = "bf16"', suite)
    if variant.grid_only:  # drop every [methods.*] table but the grid's
        parts = re.split(r"(?m)^(?=\[methods\.)", text)
        text = "".join(p for p in parts
                       if not p.startswith("[methods.") or p.startswith("[methods.grid]"))
    return text


class UtilisationSampler:
    """GPU utilisation and memory in use, sampled every ``SAMPLE_EVERY_S`` through NVML
    (nvidia-ml-py) on a thread while a run goes on; ``rows_`` holds the samples."""

    def __init__(self, device_index: int = 0) -> None:
        self.device_index = device_index

    def __enter__(self) -> UtilisationSampler:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        self.rows_: list[dict] = []
        self._stop = threading.Event()
        started = time.perf_counter()

        def sample() -> None:
            while not self._stop.wait(SAMPLE_EVERY_S):
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                self.rows_.append({"t_s": time.perf_counter() - started, "gpu_pct": rates.gpu,
                                   "memory_used_mib": memory.used / 2**20})

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import pynvml

        self._stop.set()
        self._thread.join()
        pynvml.nvmlShutdown()

    def mean_pct(self, skip_s: float = 0.0) -> float:
        """Mean utilisation after the first ``skip_s`` seconds (Ray's start holds no trial)."""
        rows = [r["gpu_pct"] for r in self.rows_ if r["t_s"] >= skip_s]
        return sum(rows) / len(rows) if rows else float("nan")


def _grid_figures(run_dir: Path, trials) -> dict:
    """Grid trials per hour of wall time, and the retrained incumbent's test accuracy."""
    meta = json.loads((run_dir / S.METADATA_FILE).read_text())
    grid = trials[trials[S.METHOD] == "grid"]
    search = grid[grid[S.KIND] == S.SEARCH]
    retrain = grid[grid[S.KIND] == S.RETRAIN]
    wall = meta["suite_wall_s"] - meta.get("ray_start_s", 0.0)
    return {"trials": int(len(search)), "failed": int((grid[S.STATUS] == S.FAILED).sum()),
            "wall_s": wall, "trials_per_hour": len(search) / wall * 3600,
            "test_acc": float(retrain[S.TEST_ACC].mean()) if len(retrain) else float("nan")}


def _learned_figures(trials) -> dict:
    out = {}
    for method, rows in trials[trials[S.KIND] == S.LEARNED].groupby(S.METHOD):
        out[str(method)] = {"ok": int((rows[S.STATUS] == S.OK).sum()), "runs": int(len(rows)),
                            "test_acc": float(rows[S.TEST_ACC].max()),
                            "error": next(iter(rows[S.ERROR].dropna()), None)}
    return out


def _device() -> dict:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "memory_gib": props.total_memory / 2**30, "torch": torch.__version__,
            "cuda": torch.version.cuda, "host": platform.node(), "python": sys.version.split()[0]}


def _pytest(out: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs",
                           "-p", "no:cacheprovider"], capture_output=True, text=True)
    (out / "pytest-gpu.txt").write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"exit": proc.returncode, "summary": tail, "wall_s": time.perf_counter() - started}


def summary_markdown(figures: dict) -> str:
    d = figures["device"]
    lines = [f"# GPU check on {d['name']} (x{d['count']}, {d['memory_gib']:.0f} GiB)", "",
             f"torch {d['torch']}, CUDA {d['cuda']}, Python {d['python']}, host {d['host']}; "
             f"`{figures['command']}`", "",
             f"pytest -m gpu: {figures['pytest']['summary']} (exit {figures['pytest']['exit']})",
             "", "| run | what | grid trials | failed | wall s | trials/h | grid test acc | "
             "mean GPU util |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, f in figures["runs"].items():
        lines.append(f"| {name} | {f['about']} | {f['trials']} | {f['failed']} | "
                     f"{f['wall_s']:.0f} | {f['trials_per_hour']:.0f} | {f['test_acc']:.4f} | "
                     f"{f['gpu_util_pct']:.0f}% |")
    p = figures["p8"]
    lines += ["", f"- P8: packed at 0.25 gives {p['packed_vs_single']:.2f}x the grid trials per "
              f"hour of one trial per GPU (goal >= 3x); GPU utilisation while packed "
              f"{p['packed_util_pct']:.0f}% (goal >= 70%).",
              f"- bf16: {p['bf16_vs_float32']:.2f}x the trials per hour of float32, test "
              f"accuracy {100 * p['bf16_acc_diff']:+.2f} points (goal: within 1 point).", "",
              "| learned method | ok / runs | test acc | error |", "|---|---:|---:|---|"]
    for method, f in figures["learned"].items():
        lines.append(f"| {method} | {f['ok']}/{f['runs']} | {f['test_acc']:.4f} | "
                     f"{f['error'] or ''} |")
    return "\n".join(lines) + "\n"


def gpu_check(suite_path: str, out: Path, command: str = "") -> dict:
    """Run the check into ``out`` (which must not exist yet); print and return its figures."""
    import torch

    from bench.driver.run import run_suite
    from bench.driver.suite import parse_suite

    if not torch.cuda.is_available():
        raise BenchError("bench benchmark gpu needs CUDA: torch.cuda.is_available() is False "
                         "on this machine")
    try:
        import pynvml  # noqa: F401  (nvidia-ml-py: the utilisation samples)
    except ImportError:
        raise BenchError("bench benchmark gpu samples GPU utilisation through NVML: "
                         "pip install nvidia-ml-py") from None
    try:
        base = Path(suite_path).read_text()
    except OSError as err:
        raise BenchError(f"cannot read suite {suite_path}: {err.strerror}") from None
    out = Path(out)
    if out.exists():
        raise BenchError(f"{out} exists: the GPU check writes a new directory")
    suites = {v.name: parse_suite(variant_text(base, v, suite_path), suite_path)
              for v in VARIANTS}  # every variant checked before anything runs
    out.mkdir(parents=True)
    figures = {"command": command or " ".join(sys.argv), "device": _device(),
               "suite": suite_path}
    print(f"GPU check on {figures['device']['name']} into {out}", flush=True)
    figures["pytest"] = _pytest(out)
    print(f"pytest -m gpu: {figures['pytest']['summary']}", flush=True)
    from bench.records.tables import read_trials

    figures["runs"], records = {}, {}
    for v in VARIANTS:
        print(f"{v.name}: {v.about} ...", flush=True)
        with UtilisationSampler() as sampler:
            run_suite(suites[v.name], out / v.name, progress=False, command=figures["command"])
        meta = json.loads((out / v.name / S.METADATA_FILE).read_text())
        with open(out / v.name / "gpu_util.csv", "w") as f:
            f.write("t_s,gpu_pct,memory_used_mib\n")
            f.writelines(f"{r['t_s']:.2f},{r['gpu_pct']},{r['memory_used_mib']:.0f}\n"
                         for r in sampler.rows_)
        records[v.name] = read_trials(out / v.name)
        figures["runs"][v.name] = _grid_figures(out / v.name, records[v.name]) | {
            "about": v.about, "gpu_util_pct": sampler.mean_pct(meta.get("ray_start_s", 0.0))}
        print(f"  {figures['runs'][v.name]}", flush=True)
    runs = figures["runs"]
    figures["p8"] = {
        "packed_vs_single": runs["grid-packed"]["trials_per_hour"]
        / runs["grid-single"]["trials_per_hour"],
        "packed_util_pct": runs["grid-packed"]["gpu_util_pct"],
        "bf16_vs_float32": runs["grid-packed-bf16"]["trials_per_hour"]
        / runs["grid-packed"]["trials_per_hour"],
        "bf16_acc_diff": runs["grid-packed-bf16"]["test_acc"] - runs["grid-packed"]["test_acc"]}
    figures["learned"] = _learned_figures(records["suite"])
    (out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(figures))
    print(summary_markdown(figures), end="")
    return figures
