"""A run's journal: one JSON line per harness decision, appended and flushed as it
happens, so a driver killed at any moment leaves every finished trial on disk and a
resumed run can rebuild the campaigns' state (``CampaignQueue.resume``).

A line is one ``write`` of a whole event; a kill can only tear the last line, which
``read_journal`` drops (and ``Journal`` cuts off before appending)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.protocol import EVENT, Event, event_kind
from bench.records.tables import write_text

AT = "at"  # suite seconds when the event happened

# what each kind of event holds besides its kind, campaign and time: (key, type, what)
_TRIAL = ("trial", str, "a trial id")
_FIELDS = {
    Event.START: (), Event.DONE: (), Event.TELL: (_TRIAL,),
    Event.SUGGEST: (_TRIAL, ("hp", dict, "an object of hyperparameters")),
    Event.REPORT: (_TRIAL, ("report", dict, "an object"), ("asked", bool, "true or false")),
    Event.COMPLETE: (_TRIAL, ("row", dict, "an object")),
}
# a complete event's row: the keys resuming reads (bench.driver.campaign.Campaign._finish)
_ROW_KEYS = (S.TRIAL_ID, S.KIND, S.STATUS, S.RESOURCE_S)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _problem(line: object) -> str | None:
    """What is wrong with one parsed journal line, in a few words; None if nothing."""
    if not isinstance(line, dict):
        return f"expected a JSON object, got {type(line).__name__}"
    kind = event_kind(line)
    if kind is None:
        return (f"unknown event {line[EVENT]!r}" if EVENT in line else
                f"no {EVENT!r} (every line is an event: "
                f"{', '.join(e.value for e in Event)})")
    campaign = line.get("campaign")
    if not isinstance(campaign, int) or isinstance(campaign, bool) or campaign < 0:
        return f"{kind.value} event without a campaign number (\"campaign\": an integer >= 0)"
    if not _is_number(line.get(AT)):
        return f"{kind.value} event without its suite time (\"{AT}\": a number)"
    for key, typ, what in _FIELDS[kind]:
        if not isinstance(line.get(key), typ):
            return f"{kind.value} event without \"{key}\" ({what})"
    if kind == Event.REPORT and not _is_number(line["report"].get(S.STEP)):
        return f"report event of {line['trial']} without \"{S.STEP}\" in its report"
    if kind == Event.COMPLETE:
        missing = [k for k in _ROW_KEYS if k not in line["row"]]
        if missing:
            return f"complete event of {line['trial']}: its row has no {missing[0]!r}"
        if line["row"][S.TRIAL_ID] != line["trial"]:
            return f"complete event of {line['trial']}: its row is of {line['row'][S.TRIAL_ID]}"
    return None


def read_journal(path: Path) -> tuple[list[dict], int]:
    """The journal's events, and the byte length of its whole lines. A line that is not an
    event the harness writes is refused in one line naming the file and the line number."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise BenchError(f"cannot read journal {path}: {err.strerror or err}") from None
    events, good = [], 0
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            break  # torn by a kill mid-write
        try:
            event = json.loads(line)
        except ValueError:
            event, problem = None, "not a line of JSON"
        else:
            problem = _problem(event)
        if problem:
            raise BenchError(f"journal {path}, line {number}: {problem}")
        events.append(event)
        good += len(line)
    return events, good


def rewrite_journal(path: Path, events: list[dict]) -> None:
    """Replace the journal with ``events`` (whole lines only), atomically: a kill leaves
    either the old journal or the new one."""
    write_text(Path(path), "".join(json.dumps(e) + "\n" for e in events))


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
