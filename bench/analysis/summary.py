"""A finished run's figure and report together, as ``bench run`` and ``bench replay`` end:
drawn and written side by side in forked processes where the cores allow
(``bench.driver.forked``), each timed."""

from __future__ import annotations

import time
from pathlib import Path


def _timed(job):
    started = time.perf_counter()
    return job(), time.perf_counter() - started


def plot_and_report(run_dir: str | Path) -> tuple[list[Path], str, dict[str, float]]:
    """``plot_run`` and ``report_run`` of ``run_dir``: the figure's paths, the report's
    text, and the seconds each took (``figures_s``, ``report_s``)."""
    from bench.analysis.plots import plot_run
    from bench.analysis.report import report_run
    from bench.driver.forked import fork_map

    jobs = (lambda: plot_run(run_dir), lambda: report_run(run_dir))
    # the items travel pickled, the function is inherited: send indices
    (paths, figures_s), (report, report_s) = fork_map(lambda i: _timed(jobs[i]), [0, 1])
    return paths, report, {"figures_s": figures_s, "report_s": report_s}
