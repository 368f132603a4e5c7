"""A run's journal: one JSON line per harness decision, appended and flushed as it
happens, so a driver killed at any moment leaves every finished trial on disk and a
resumed run can rebuild the campaigns' state (``CampaignQueue.resume``).

A line is one ``write`` of a whole event; a kill can only tear the last line, which
``read_journal`` drops (and ``Journal`` cuts off before appending)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from bench.contract.errors import BenchError

AT = "at"  # suite seconds when the event happened


def read_journal(path: Path) -> tuple[list[dict], int]:
    """The journal's events, and the byte length of its whole lines."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise BenchError(f"cannot read journal {path}: {err.strerror or err}") from None
    events, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn by a kill mid-write
        try:
            events.append(json.loads(line))
        except ValueError:
            raise BenchError(f"journal {path} is corrupt at byte {good}") from None
        good += len(line)
    return events, good


class Journal:
    """Appends events to ``path`` (opened on the first one)."""

    def __init__(self, path: Path, elapsed: Callable[[], float], keep_bytes: int | None = None):
        self.path, self.elapsed, self.keep_bytes = Path(path), elapsed, keep_bytes
        self._file = None

    def __call__(self, event: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "ab")
            if self.keep_bytes is not None:  # drop a torn last line before appending
                self._file.truncate(self.keep_bytes)
        line = json.dumps({**event, AT: round(self.elapsed(), 6)}, default=float) + "\n"
        self._file.write(line.encode())
        self._file.flush()  # in the OS's hands: survives the driver's death

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
