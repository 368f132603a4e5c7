"""The ``bench`` command line. Bad input: one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from bench.contract.errors import BenchError, one_line
from bench.contract.protocol import BACKENDS, DEFAULT_BACKEND


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise BenchError(f"{self.prog.removeprefix('bench ')}: {message}")


def _key_value(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def _directory(text: str) -> str:
    """A run directory argument: an empty one would silently mean the default."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no directory")
    return text


def _cmd_list(args) -> int:
    if args.what == "datasets":
        from bench.zoo.data import DATASETS

        for info in DATASETS.values():
            where = "offline" if info.offline else "online"
            print(f"{info.name:15} {where:8} {info.description}  [get: {info.how_to_get}]")
    elif args.what == "backbones":
        from bench.zoo.backbones import BACKBONES

        for info in BACKBONES.values():
            print(f"{info.name:20} offline  {info.description}; default {info.default_size}px, "
                  f"min {info.min_size}px")
        print(f"{'tv:<arch>':20} online   any torchvision classification model, e.g. tv:resnet50")
    elif args.what == "methods":
        from bench.contract.plugins import available_methods, method_class

        for name in sorted(available_methods()):
            cls = method_class(name)
            kind = "search " if cls.uses_validation else "learned"
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
            first = " ".join(doc.split("\n\n")[0].split()).split(". ")[0]  # first sentence
            print(f"{name:16} {kind}  {first}")
    elif args.what == "records":
        from bench.records.published import RECORD_SETS, summary

        print(f"{'record set':32} {'data set':16} {'model':14} {'N':25} {'seeds':15} "
              f"{'configs':8} {'GPU-h':>6}  extra")
        for name in RECORD_SETS:
            s = summary(name)
            per_n = [f"{lo}" if lo == hi else f"{lo}-{hi}"
                     for lo, hi in s["configurations"].values()]
            configs = per_n[0] if len(set(per_n)) == 1 else " ".join(per_n)
            extra = ", ".join(x for x, has in (("BO trace", s["bo"]), ("CLML", s["clml"])) if has)
            print(f"{s['name']:32} {s['dataset']:16} {s['model']:14} "
                  f"{' '.join(map(str, s['ns'])):25} {' '.join(map(str, s['seeds'])):15} "
                  f"{configs:8} {s['gpu_hours']:6.0f}  {extra}")
        print("configs: per (N, seed), in the order of N; GPU-h: A100 hours of the grid's "
              "tuned and retrained runs")
    else:
        from bench.zoo.regularizers import REGULARIZERS

        for cls in REGULARIZERS.values():
            space = ", ".join(
                f"{p.name} in [{p.low:g}, {p.high:g}]{' log' if p.log else ''}"
                f" grid {list(p.grid)}" for p in cls.space) or "no hyperparameters"
            print(f"{cls.name:12} {cls.description}\n{'':12} {space}")
    return 0


def _cmd_train(args) -> int:
    from bench.contract.options import require_seed
    from bench.driver.preflight import check_data_fits
    from bench.zoo.regularizers import make_regularizer
    from bench.driver.suite import check_task_values
    from bench.zoo.task import Task
    from bench.training.train import TrainConfig, fine_tune

    require_seed("train: --seed", args.seed)
    task = Task(dataset=args.dataset, n=args.n, backbone=args.backbone,
                regularizer=args.regularizer, image_size=args.image_size, steps=args.steps,
                batch_size=args.batch_size, test_limit=args.test_limit)
    regularizer = make_regularizer(args.regularizer, **dict(args.hp))
    config = TrainConfig(lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                         seed=args.seed, report_every=args.report_every or args.steps)
    check_task_values("train", task)
    check_data_fits(task)
    data = task.load(args.seed)
    net = data.network()

    def progress(report) -> None:
        test = report.metrics["test"]
        print(f"step {report.step:5d}  loss {report.train_loss:.4f}  test acc "
              f"{test['acc']:.4f}  nll {test['nll']:.4f}", file=sys.stderr)

    result = fine_tune(net, regularizer, data.train, config, {"test": data.test}, progress)
    summary = {
        "task": task.name, "regularizer": regularizer.name,
        "hyperparameters": regularizer.hyperparameters(), "lr": args.lr, "seed": args.seed,
        "steps": result.steps_done, "final_loss": result.final_loss,
        "test_acc": result.metrics["test"]["acc"], "test_nll": result.metrics["test"]["nll"],
        "train_s": round(result.train_s, 3), "eval_s": round(result.eval_s, 3),
        "other_s": round(result.other_s, 3), "wall_s": round(result.wall_s, 3),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:16} {value}")
    return 0


def _cmd_pretrain(args) -> int:
    from bench.zoo.backbones import pretrain_small_cnn

    print(pretrain_small_cnn(force=args.force))
    return 0


def _cmd_benchmark(args) -> int:
    from bench.contract.options import require_int

    # every number is checked before the first line of figures is printed
    for flag in ("steps", "batch_size", "repeats"):
        require_int(f"benchmark: --{flag.replace('_', '-')}", getattr(args, flag), 1)
    for flag in ("workers", "ns"):
        for value in getattr(args, flag):
            require_int(f"benchmark: --{flag}", value, 1)
    from bench import benchmarks

    if args.what == "loop":
        benchmarks.loop_benchmark(steps=args.steps, batch_size=args.batch_size,
                                  repeats=args.repeats)
    elif args.what == "prefix":
        benchmarks.prefix_benchmark(steps=args.steps, batch_size=args.batch_size,
                                    repeats=args.repeats)
    elif args.what == "ntk":
        from methods._ntk import ntk_scaling_benchmark

        ntk_scaling_benchmark(backbone=args.backbone, ns=tuple(args.ns), repeats=args.repeats)
    elif args.what == "replay":
        benchmarks.replay_benchmark(args.suite or "suites/published.toml", out=args.out)
    elif args.what == "gpu":
        from bench.gpu_check import gpu_check

        gpu_check(args.suite or "suites/gpu-quick.toml", args.out or "runs/gpu-check")
    elif args.run_dir:
        benchmarks.print_overhead(args.run_dir, [benchmarks.overhead_shares(args.run_dir)])
    else:
        benchmarks.harness_benchmark(args.suite or "suites/overhead.toml",
                                     workers=tuple(args.workers), backend=args.backend)
    return 0


def _method_bug(err: BaseException) -> int:
    """A method's hook raised (``MethodHookError``, maybe wrapped by Ray Tune): say which
    method and hook, with the traceback, and exit 1; any other error is re-raised."""
    from bench.driver.campaign import MethodHookError

    cause, seen = err, set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, MethodHookError):
            print(f"bench: {cause}\n{cause.trace}", end="", file=sys.stderr)
            return 1
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    raise err


def _cmd_run(args) -> int:
    from bench.driver.run import RunStopped, Terminated, run_suite, stop_on_sigterm
    from bench.driver.suite import load_suite

    suite = load_suite(args.suite)
    if args.resume and args.out:
        raise BenchError("run: give --out or --resume, not both")
    if suite.replay:  # records, not training: the same as bench replay
        for flag, given in (("--resume", args.resume), ("--address", args.address),
                            ("--backend", args.backend)):
            if given:
                raise BenchError(f"run: {args.suite} is a replay suite (it names records): "
                                 f"{flag} does not apply; bench replay {args.suite}")
        return _replay(suite, args)
    out = Path(args.resume or args.out or Path("runs") / suite.name)
    again = f"go on with: bench run {args.suite} --resume {out}"
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C (SIGINT) stops the driver even when it was started where SIGINT is
        # ignored (a shell's background job inherits it ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sigterm = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()  # SIGTERM (kill, a scheduler's stop) likewise: one line, exit 143
    try:
        run_suite(suite, out, address=args.address, progress=not args.quiet,
                  resume=bool(args.resume), backend=args.backend or DEFAULT_BACKEND)
    except Terminated:
        print(f"bench: terminated (SIGTERM); {again}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"bench: interrupted; {again}", file=sys.stderr)
        return 130
    except RunStopped as err:
        print(f"bench: {err}; {again}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a method's own hook raised: its bug
        return _method_bug(err)
    finally:
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
    return _summarize(out)


def _cmd_replay(args) -> int:
    from bench.driver.suite import load_suite

    return _replay(load_suite(args.suite, replay_only=True), args)


def _replay(suite, args) -> int:
    from bench.driver.replay_suite import run_replay

    out = Path(args.out or Path("runs") / suite.name)
    try:
        run_replay(suite, out, progress=not args.quiet, jobs=getattr(args, "jobs", None),
                   meanwhile=_import_summary)
    except Exception as err:  # noqa: BLE001 - a method's own hook raised: its bug
        return _method_bug(err)
    return _summarize(out)


def _import_summary() -> None:
    """What ``_summarize`` needs (matplotlib, scipy: a second or more), imported while a
    replay's campaigns simulate in other processes rather than after."""
    import bench.analysis.summary  # noqa: F401
    import bench.analysis.plots  # noqa: F401
    import bench.analysis.report  # noqa: F401


def _summarize(out: Path) -> int:
    """Plot and report a finished run directory."""
    from bench.analysis.summary import plot_and_report

    paths, report, _ = plot_and_report(out)
    print(report)
    print(f"records, plot and report in {out}/ ({', '.join(p.name for p in paths)})")
    return 0


def _cmd_plot(args) -> int:
    from bench.analysis.plots import plot_run

    methods = [m for text in args.methods or [] for m in text.split(",") if m] or None
    for path in plot_run(args.run_dirs, methods=methods, band=args.band, tasks=args.tasks,
                         out=args.out):
        print(path)
    return 0


def _cmd_report(args) -> int:
    from bench.analysis.report import report_run

    print(report_run(args.run_dirs, out=args.out))
    return 0


def _cmd_compare(args) -> int:
    from bench.analysis.compare import compare_runs

    text, paths = compare_runs(args.run_dirs, args.out)
    print(text)
    print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


def _cmd_status(args) -> int:
    from bench.analysis.status import format_status, run_status

    print(format_status(*run_status(args.run_dir)))
    return 0


def _cmd_export(args) -> int:
    from bench.records.tables import export_csv

    for path in export_csv(args.run_dir):
        print(path)
    return 0


def _add_out(p: argparse.ArgumentParser) -> None:
    """``--out``, as bench run and bench replay take it."""
    p.add_argument("--out", type=_directory,
                   help="run directory (default: runs/<suite name>); new or empty: "
                        "neither a run nor other files")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="show no progress (else a live display on a terminal, one line per "
                        "finished trial elsewhere)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description=__doc__.split("\n")[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "run", help="run a suite on Ray; write records, plot and report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 done; 2 bad input (nothing written); 130 interrupted by Ctrl-C, "
               "143 by SIGTERM\nand 1 stopped early by Ray (all resumable with --resume DIR); "
               "1 also when a method's\nown hook raised (its traceback is printed).\n"
               "BENCH_FAULTS=CAMPAIGN:TRIAL=FAULT,... injects faults (raise, nan, oom, die) "
               "into trials,\nto test that a suite survives them (see docs/reliability.md).")
    p.add_argument("suite", help="suite file (TOML), e.g. suites/quick.toml; a replay suite "
                                 "(one that names records) is replayed, as by bench replay "
                                 "(no --resume, --address, --backend)")
    _add_out(p)
    p.add_argument("--resume", metavar="DIR", type=_directory,
                   help="go on with the run in DIR that was stopped or killed (same suite): "
                        "finished trials are kept and counted, trials cut short run again")
    p.add_argument("--address", default=None,
                   help="existing Ray cluster (default: $RAY_ADDRESS, else a local Ray "
                        "started and stopped by the harness)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="how trials run on Ray: actors, a pool of long-lived workers that "
                        "keep their data and network between trials (default); tune, one "
                        "Ray Tune experiment (same records, more time between trials)")
    _add_quiet(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("replay", help="replay search methods on recorded runs (simulated time)",
                       epilog="exit status: 0 done; 2 bad input, or a suite that names no "
                              "records (nothing written); 1 when a method's own hook raised.")
    p.add_argument("suite", help="replay suite (TOML: a suite with records = ...), e.g. "
                                 "suites/replay-cifar10-resnet50.toml")
    _add_out(p)
    _add_quiet(p)
    p.add_argument("--jobs", type=_positive_int, metavar="N",
                   help="processes that simulate a one-worker replay's campaigns (default: "
                        "the cores this process may use; the records are the same for any N)")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("plot", help="accuracy-vs-compute plot of a run directory (DIR/tradeoff.png "
                                    "and .svg; more than 6 tasks: small multiples, up to 24 "
                                    "panels a page, tradeoff-2.png, ...), or of several merged")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories of the same tasks, seeds and unit (several: "
                        "merged into one figure, against the first one's reference)")
    p.add_argument("--out", metavar="DIR", help="folder for the figure (default: the first "
                                                "RUN_DIR)")
    p.add_argument("--tasks", metavar="PATTERN",
                   help="only the tasks matching this fnmatch pattern, e.g. 'cifar10-*'")
    p.add_argument("--methods", nargs="+", metavar="LABEL",
                   help="only these methods (labels, space- or comma-separated; default: all)")
    p.add_argument("--band", choices=["ci", "minmax", "none"], default="ci",
                   help="around each mean: a 95%% bootstrap interval over seeds (ci, default), "
                        "the lowest to highest seed (minmax), or nothing")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("report", help="Markdown report of a run directory (test accuracy with "
                                      "intervals, paired differences, compute to target); "
                                      "printed and written to DIR/report.md; several "
                                      "directories: merged into one report")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories of the same tasks, seeds and unit (several: "
                        "compared with the first one's reference)")
    p.add_argument("--out", metavar="DIR", help="folder for report.md (default: the first "
                                                "RUN_DIR)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="one summary over every task of one or more runs: "
                                       "normalised regret and mean rank at fractions of the "
                                       "reference's compute, anytime figure, performance "
                                       "profiles, critical-difference diagram (5 tasks or "
                                       "more)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="runs/compare",
                   help="folder for compare.md, anytime.png/svg, profile.png/svg and "
                        "cd.png/svg (default: runs/compare)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("status", help="where a run stands (running, killed or finished): per "
                                      "campaign trials done, compute spent of its cap, incumbent")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("export", help="write CSV copies of a run directory's tables")
    p.add_argument("run_dir")
    p.add_argument("--csv", action="store_true", required=True, help="as CSV (the one format)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("list", help="list data sets, backbones, regularizers, methods or "
                                    "published record sets (for bench replay)")
    p.add_argument("what", choices=["datasets", "backbones", "regularizers", "methods",
                                    "records"])
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("train", help="one fine-tuning run; prints the final test metrics")
    p.add_argument("--dataset", default="animal-mnist", help="data set (bench list datasets)")
    p.add_argument("--n", type=int, default=100, help="training examples (stratified)")
    p.add_argument("--backbone", default="efficientnet-lite0", help="bench list backbones")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in pixels (default: the backbone's)")
    p.add_argument("--regularizer", default="l2sp", help="bench list regularizers")
    p.add_argument("--hp", type=_key_value, action="append", default=[], metavar="NAME=VALUE",
                   help="a regularizer hyperparameter, e.g. --hp alpha=1e-3 (repeatable)")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps (cosine decay)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="subsample, head init, batch order")
    p.add_argument("--test-limit", type=int, default=None,
                   help="evaluate on a fixed stratified subset of the test set")
    p.add_argument("--report-every", type=int, default=None,
                   help="evaluate on the test set every so many steps (default: at the end)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("pretrain", help="pretrain small-cnn on Fashion-MNIST (cached by recipe)")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("benchmark", help="speed figures: training loop, harness overhead, "
                       "replay, the GPU check")
    p.add_argument("what", choices=["loop", "harness", "ntk", "prefix", "gpu", "replay"],
                   nargs="?",
                   default="loop",
                   help="loop: harness vs bare PyTorch img/s; harness: a suite's overhead "
                        "share and throughput per pool size; ntk: one NTK-bound hyper-step "
                        "vs one full-data Laplace hyper-step as N grows; prefix: "
                        "EfficientNet-Lite0 step time, whole network vs its top blocks on "
                        "cached prefix outputs (trainable_blocks); gpu: on a machine with "
                        "CUDA, pytest -m gpu, the GPU quick suite packed at 0.25, and its grid "
                        "at one trial per GPU, packed, and packed in bf16 (trials per hour, "
                        "GPU utilisation), all into --out; replay: bench replay of --suite "
                        "(default suites/published.toml) with report and figures, the wall "
                        "time of each stage and simulated trials per second")
    p.add_argument("--steps", type=int, default=30,
                   help="loop, prefix: timed steps per measurement")
    p.add_argument("--batch-size", type=int, default=32, help="loop, prefix: batch size")
    p.add_argument("--repeats", type=int, default=3,
                   help="loop, prefix: runs, best kept; ntk: timings, median kept")
    p.add_argument("--suite", default=None, help="harness: the suite to time (default "
                   "suites/overhead.toml); gpu: the suite to check (default "
                   "suites/gpu-quick.toml); replay: the replay suite (default "
                   "suites/published.toml)")
    p.add_argument("--out", default=None, help="gpu: a new directory for everything the check "
                   "writes (default runs/gpu-check); replay: a new directory to keep the "
                   "replay in (default: a temporary one)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="harness: pool sizes to compare")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="harness: how trials run on Ray, as bench run --backend")
    p.add_argument("--run-dir", default=None,
                   help="harness: analyse this finished run instead of running the suite")
    p.add_argument("--backbone", default="small-cnn", help="ntk: the network (bench list "
                   "backbones)")
    p.add_argument("--ns", type=int, nargs="+", default=[100, 1000],
                   help="ntk: training-set sizes to time")
    p.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BenchError as err:
        print(f"bench: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`bench list records | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
