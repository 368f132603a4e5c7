"""The budget a suite gives every campaign: the worker pool, the compute cap and its unit.
Its own module (not the suite parser's) so that the campaign, the backends and the parser
all import it without importing one another."""

from __future__ import annotations

from dataclasses import dataclass

from bench.contract.errors import BenchError
from bench.contract.options import is_number, require_int, require_positive
from bench.contract.schema import UNIT_LABELS


@dataclass(frozen=True)
class Budget:
    """The worker pool and compute cap every method of a task gets, and the one unit that
    compute is counted in: ``unit`` "gpu" charges a trial wall seconds x the GPUs it holds
    (GPU-seconds), "cpu" wall seconds x its CPU cores (core-seconds). Left out: "gpu"
    whenever trials hold GPUs, else "cpu" (resolved here, so records name it)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    cap_s: float = 600.0
    unit: str = ""

    def __post_init__(self) -> None:
        require_int("budget.workers", self.workers, 1)
        require_positive("budget.cpus_per_worker", self.cpus_per_worker)
        gpus = self.gpus_per_worker
        if not is_number(gpus) or gpus < 0:
            raise BenchError(f"budget.gpus_per_worker must be >= 0, got {gpus!r}")
        if gpus > 1 and gpus != int(gpus):  # Ray cannot split a trial across GPUs unevenly
            raise BenchError(f"budget.gpus_per_worker must be a fraction in (0, 1] (trials "
                             f"share a GPU) or a whole number of GPUs, got {gpus:g}")
        require_positive("budget.cap_s", self.cap_s)
        unit = self.unit or ("gpu" if gpus > 0 else "cpu")
        if not isinstance(unit, str) or unit not in UNIT_LABELS:
            raise BenchError(f"budget.unit must be one of {', '.join(map(repr, UNIT_LABELS))}, "
                             f"got {self.unit!r}")
        if unit == "gpu" and gpus == 0:
            raise BenchError("budget.unit = 'gpu' counts GPU-seconds but gpus_per_worker is 0: "
                             "give trials GPUs (e.g. gpus_per_worker = 0.25) or use unit = 'cpu'")
        if unit == "cpu" and self.cpus_per_worker < 1:
            # a trial trains on at least one whole thread: a fraction would undercharge it
            raise BenchError(f"budget.cpus_per_worker must be >= 1 when compute is counted in "
                             f"CPU core-seconds (a trial uses at least one whole thread), got "
                             f"{self.cpus_per_worker:g}")
        object.__setattr__(self, "unit", unit)

    @property
    def charge_rate(self) -> float:
        """What one trial is charged per wall second, in ``unit``: the GPUs it holds, or
        its CPU cores."""
        return self.gpus_per_worker if self.unit == "gpu" else self.cpus_per_worker

    @property
    def unit_label(self) -> str:
        return UNIT_LABELS[self.unit]
