"""Reading and writing a run directory's records; every write is atomic."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench.contract import schema
from bench.contract.errors import BenchError


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename over ``path``: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def frame(rows: Iterable[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows as a table with exactly ``columns`` (missing values empty)."""
    return pd.DataFrame(list(rows), columns=list(columns))


def write_table(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet table, read through one open file: a rename by a running suite between
    pyarrow's look at the size and its read (by path) would mix two versions."""
    with open(path, "rb") as f:
        return pd.read_parquet(f)


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / schema.TRIALS_FILE
    if not path.is_file():
        raise BenchError(f"no {schema.TRIALS_FILE} in {run_dir}: not a suite run directory")
    return read_table(path)


def read_reports(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / schema.REPORTS_FILE
    return read_table(path) if path.is_file() else frame([], schema.REPORT_COLUMNS)


def export_csv(run_dir: str | Path) -> list[Path]:
    """Write CSV copies of the run's tables beside them."""
    out = []
    for name, table in ((schema.TRIALS_FILE, read_trials(run_dir)),
                        (schema.REPORTS_FILE, read_reports(run_dir))):
        path = Path(run_dir) / Path(name).with_suffix(".csv")
        atomic_write(path, lambda tmp, t=table: t.to_csv(tmp, index=False))
        out.append(path)
    return out


def comparable(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials without their timing (columns, and INFO keys ending in ``_s``), sorted by
    campaign and trial: what two runs of the same suite and seeds should agree on."""
    def untimed(info):
        if not isinstance(info, str):
            return info
        return json.dumps({k: v for k, v in json.loads(info).items() if not k.endswith("_s")},
                          sort_keys=True)

    table = trials.drop(columns=[c for c in schema.TIMING_COLUMNS if c in trials])
    table = table.assign(**{schema.INFO: table[schema.INFO].map(untimed)})
    key = [schema.TASK, schema.METHOD, schema.SEED, schema.TRIAL_ID]
    return table.sort_values(key, kind="stable").reset_index(drop=True)
