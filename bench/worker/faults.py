"""Fault injection, to show that a suite survives failing trials.

``BENCH_FAULTS="CAMPAIGN:TRIAL=FAULT[,...]"`` in the driver's environment makes the named
trials fail on their worker; CAMPAIGN is the campaign's position in the suite (0 is the
first task's first seed's first method) and TRIAL the campaign's trial name (``t0000``).
Each fault goes through the path a real one takes:

- ``raise``: the method's code raises (RuntimeError);
- ``nan``: the network's weights hold NaN, so the training loss is NaN and the loop stops
  the trial as diverged (as a huge learning rate does);
- ``oom``: an allocation fails (MemoryError, as PyTorch raises on the CPU);
- ``die``: the worker process exits at once, as if the OS killed it.
"""

from __future__ import annotations

import os
import re

from bench.contract.errors import BenchError

FAULTS = ("raise", "nan", "oom", "die")
ENV = "BENCH_FAULTS"
_SPEC = re.compile(r"^\s*(\d+):(t\d{4}(?:-retrain)?)=(\w+)\s*$")


def parse_faults(text: str | None) -> dict[tuple[int, str], str]:
    """{(campaign, trial): fault} from a BENCH_FAULTS value."""
    faults = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        match = _SPEC.match(item)
        if not match or match[3] not in FAULTS:
            raise BenchError(f"{ENV}: cannot read {item.strip()!r}; expected "
                             f"CAMPAIGN:TRIAL=FAULT with FAULT one of {', '.join(FAULTS)}, "
                             "e.g. 0:t0001=raise")
        faults[(int(match[1]), match[2])] = match[3]
    return faults


def faults_from_env() -> dict[tuple[int, str], str]:
    return parse_faults(os.environ.get(ENV))


def inject_at_start(fault: str | None) -> None:
    """Faults that strike before training: called inside the trial's error handling."""
    if fault == "raise":
        raise RuntimeError("injected fault")
    if fault == "oom":
        raise MemoryError("injected: out of memory")
    if fault == "die":
        os._exit(70)  # no cleanup, no exception: the process is gone


def poisoned(make_network, fault: str | None):
    """``make_network``, with NaN weights when the fault is ``nan``."""
    if fault != "nan":
        return make_network

    def make():
        import torch

        network = make_network()
        with torch.no_grad():
            for param in network.model.parameters():
                param.fill_(float("nan"))
        return network

    return make
