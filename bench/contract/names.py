"""Default task names, torch-free: ``bench.zoo.task.Task`` names its tasks with it, and
``bench status`` names a run's waiting campaigns the same way without importing torch."""

from __future__ import annotations

# label-noise kind -> name tag ("symmetric": the old name of "flip", keeping its tag)
NOISE_TAGS = {"uniform": "uni", "flip": "flip", "symmetric": "sym", "pairflip": "pair"}
DEFAULT_NOISE_KIND = "uniform"  # Li & Zhang's (bench.zoo.noise)


def noise_tag(kind: str, rate: float) -> str:
    """``sym40``, ``pair20``: a label noise's short name."""
    return f"{NOISE_TAGS.get(kind, '')}{float(rate) * 100:g}"


def task_name(dataset, n, backbone, trainable_blocks=None, noise: tuple | None = None) -> str:
    """``<dataset>-N<n>-<backbone>[-top<k>][-<noise tag>]``; ``noise``: (kind, rate)."""
    top = f"-top{trainable_blocks}" if trainable_blocks is not None else ""
    tag = f"-{noise_tag(*noise)}" if noise is not None else ""
    return f"{dataset}-N{n}-{backbone}{top}{tag}"
