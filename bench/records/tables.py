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


def rows_of(table: pd.DataFrame) -> list[dict]:
    """The table's rows as dicts, text as Python strings: read from an Arrow-backed column,
    text is boxed one value at a time, which made reading many rows slow."""
    return plain_strings(table).to_dict("records")


def plain_strings(table: pd.DataFrame) -> pd.DataFrame:
    """Text columns as Python objects (see ``rows_of``)."""
    text = {c: object for c in table.columns if pd.api.types.is_string_dtype(table[c])
            and table[c].dtype != object}
    return table.astype(text) if text else table


def write_table(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))


# what every trials table this harness wrote has: readers may rely on these
TRIAL_KEY_COLUMNS = (schema.TASK, schema.METHOD, schema.SEED, schema.TRIAL_ID, schema.KIND,
                     schema.STATUS, schema.ENDED_S, schema.RESOURCE_S)


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet table, read through one open file: a rename by a running suite between
    pyarrow's look at the size and its read (by path) would mix two versions. A file that
    cannot be read (cut short, not Parquet, no permission) is refused in one line."""
    import pyarrow as pa

    try:
        with open(path, "rb") as f:
            return pd.read_parquet(f)
    except (OSError, ValueError, pa.ArrowException) as err:  # ArrowInvalid is a ValueError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        reason = reason.rsplit("': ", 1)[-1].split(". ")[0].rstrip(".")  # pyarrow's first
        raise BenchError(f"{path}: cannot be read as a Parquet table ({reason})") from None


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / schema.TRIALS_FILE
    if not path.is_file():
        raise BenchError(f"no {schema.TRIALS_FILE} in {run_dir}: not a suite run directory")
    table = read_table(path)
    missing = [c for c in TRIAL_KEY_COLUMNS if c not in table.columns]
    if missing:
        raise BenchError(f"{path}: not a trials table of this harness (missing column(s) "
                         f"{', '.join(missing)})")
    return table


def read_reports(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / schema.REPORTS_FILE
    return read_table(path) if path.is_file() else frame([], schema.REPORT_COLUMNS)


def check_writable(directory: str | Path, name: str) -> None:
    """Refuse, in one line and before any work, to write ``name`` into a directory that
    takes no new file (no permission, read-only file system, immutable): a file is made
    and removed there, which is what the atomic write does first."""
    path = Path(directory) / name
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    except OSError as err:
        raise BenchError(f"cannot write {path}: {err.strerror or type(err).__name__} "
                         f"(the directory {directory} takes no new file)") from None
    os.close(fd)
    os.unlink(probe)


def export_csv(run_dir: str | Path) -> list[Path]:
    """Write CSV copies of the run's tables beside them."""
    out = []
    tables = ((schema.TRIALS_FILE, read_trials(run_dir)),
              (schema.REPORTS_FILE, read_reports(run_dir)))
    check_writable(run_dir, Path(schema.TRIALS_FILE).with_suffix(".csv").name)
    for name, table in tables:
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
