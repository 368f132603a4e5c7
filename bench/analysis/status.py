"""``bench status DIR``: where a run stands, read from its journal while it runs, after it
was killed, or when it finished (a replay, which keeps no journal, from its trials table).

Per campaign: trials finished (tuning trials; retrains apart), tuning compute spent of its
cap, and the incumbent. Only files are read; nothing is imported that needs torch or Ray.
"""

from __future__ import annotations

import fcntl
import tomllib
from pathlib import Path

import pandas as pd

from bench.contract import schema as S
from bench.contract.errors import BenchError
from bench.contract.names import DEFAULT_NOISE_KIND, task_name
from bench.contract.protocol import Event, event_kind
from bench.records.journal import AT, read_journal
from bench.records.rundir import compute_unit, metadata_unit, read_metadata, task_caps
from bench.records.tables import read_trials

STATUS_COLUMNS = ["campaign", S.TASK, S.METHOD, S.SEED, "state", "trials", "retrains",
                  "running", "spent_s", "cap_s", "incumbent"]


def _plan(suite_text: str, names: list[str] | None = None) -> list[tuple[str, str, int]]:
    """The suite's campaigns in the order the driver starts them (tasks, seeds, methods);
    task names as the run's metadata records them, else as ``bench.zoo.task.Task`` gives them."""
    try:
        raw = tomllib.loads(suite_text)
    except tomllib.TOMLDecodeError:
        return []
    tasks = [t.get("name") or _default_name(t) for t in raw.get("tasks") or []
             if isinstance(t, dict)]
    if names and len(names) == len(tasks):
        tasks = list(names)
    return [(task, label, seed) for task in tasks for seed in raw.get("seeds", [0])
            for label in raw.get("methods") or {}]


def _default_name(task: dict) -> str:
    """``bench.zoo.task.Task``'s default name from a suite's task table (a run's metadata.json
    names its tasks since this rule grew)."""
    noise = task.get("label_noise")
    noise = ((noise.get("kind", DEFAULT_NOISE_KIND), noise.get("rate", 0))
             if isinstance(noise, dict) else None)
    return task_name(task.get("dataset"), task.get("n"), task.get("backbone"),
                     task.get("trainable_blocks"), noise)


def driver_alive(run_dir: Path) -> bool:
    """Whether a driver holds the run's lock (the kernel frees it when a driver dies)."""
    path = run_dir / S.LOCK_FILE
    if not path.is_file():
        return False
    with open(path, "rb") as f:  # never created here: a status must not take a run's place
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _incumbent(rows: list[dict]) -> str:
    """The best finished tuning trial: lowest validation NLL (search; with its retrain's
    test accuracy once retrained) or lowest objective (learned, scored on test itself)."""
    ok = [r for r in rows if r.get(S.STATUS) == S.OK and r.get(S.KIND) != S.RETRAIN]
    search = [r for r in ok if r[S.KIND] == S.SEARCH and r.get(S.VAL_NLL) is not None
              and not pd.isna(r[S.VAL_NLL])]
    learned = [r for r in ok if r[S.KIND] == S.LEARNED and r.get(S.OBJECTIVE) is not None
               and not pd.isna(r[S.OBJECTIVE])]
    if search:
        best = min(search, key=lambda r: r[S.VAL_NLL])
        retrain = [r for r in rows if r.get(S.RETRAIN_OF) == best[S.TRIAL_ID]
                   and r.get(S.STATUS) == S.OK and r.get(S.TEST_ACC) is not None]
        test = f", test acc {100 * retrain[0][S.TEST_ACC]:.2f}%" if retrain else ", retrain pending"
        return f"{best[S.TRIAL_ID]} val_nll {best[S.VAL_NLL]:.4f}{test}"
    if learned:
        best = min(learned, key=lambda r: r[S.OBJECTIVE])
        return (f"{best[S.TRIAL_ID]} objective {best[S.OBJECTIVE]:.4g}, "
                f"test acc {100 * best[S.TEST_ACC]:.2f}%")
    return "-"


def _campaign_row(idx, name, rows: list[dict], suggested: set, state: str, caps: dict,
                  default_cap) -> dict:
    task, method, seed = name
    tuning = [r for r in rows if r[S.KIND] != S.RETRAIN]
    done = {r[S.TRIAL_ID] for r in rows}
    return {"campaign": idx, S.TASK: task, S.METHOD: method, S.SEED: seed, "state": state,
            "trials": len(tuning), "retrains": len(rows) - len(tuning),
            "running": len(suggested - done),
            "spent_s": sum(float(r[S.RESOURCE_S] or 0) for r in tuning),
            "cap_s": caps.get(task, default_cap), "incumbent": _incumbent(rows)}


def run_status(run_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """One row per campaign (``STATUS_COLUMNS``) and facts about the run as a whole."""
    run_dir = Path(run_dir)
    metadata = read_metadata(run_dir)
    journal = run_dir / S.JOURNAL_FILE
    if not journal.is_file() and not (run_dir / S.TRIALS_FILE).is_file():
        raise BenchError(f"no {S.JOURNAL_FILE} or {S.TRIALS_FILE} in {run_dir}: not a run "
                         "directory")
    try:
        suite_text = (run_dir / S.SUITE_FILE).read_text()
    except OSError:
        suite_text = ""
    plan, caps = _plan(suite_text, metadata.get("tasks")), task_caps(suite_text, metadata)
    default_cap = metadata.get("budget", {}).get("cap_s")
    facts = {"suite": metadata.get("suite", run_dir.name), "finished": "ended" in metadata
             or (not journal.is_file()), "alive": driver_alive(run_dir), "campaigns": len(plan)}
    rows = []
    if journal.is_file():
        events, _ = read_journal(journal)
        facts["suite_s"] = events[-1][AT] if events else 0.0
        started, done_idx = [], set()
        records: dict[int, list[dict]] = {}
        suggested: dict[int, set] = {}
        for e in events:
            idx, kind = e.get("campaign"), event_kind(e)
            if kind == Event.START:
                started.append(idx)
            elif kind == Event.DONE:
                done_idx.add(idx)
            elif kind == Event.SUGGEST:
                suggested.setdefault(idx, set()).add(e["trial"])
            elif kind == Event.COMPLETE:
                records.setdefault(idx, []).append(e["row"])
        for idx in started:
            mine = records.get(idx, [])
            name = ((mine[0][S.TASK], mine[0][S.METHOD], mine[0][S.SEED]) if mine else
                    plan[idx] if idx < len(plan) else ("?", "?", "?"))
            state = ("done" if idx in done_idx else "running" if facts["alive"]
                     else "cut short")
            rows.append(_campaign_row(idx, name, mine, suggested.get(idx, set()), state, caps,
                                      default_cap))
        for idx in range(len(plan)):  # the plan's campaigns not started yet
            if idx not in started and not facts["finished"]:
                rows.append(_campaign_row(idx, plan[idx], [], set(), "waiting", caps, default_cap))
    else:
        trials = read_trials(run_dir)
        groups = trials.groupby([S.TASK, S.METHOD, S.SEED], sort=False)
        for idx, (name, g) in enumerate(groups):
            mine = g.astype(object).where(g.notna(), None).to_dict("records")
            rows.append(_campaign_row(idx, name, mine, set(), "done", caps, default_cap))
        facts["campaigns"] = max(facts["campaigns"], len(rows))
    table = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    facts["unit"] = compute_unit(read_trials(run_dir), metadata) if (
        run_dir / S.TRIALS_FILE).is_file() else S.UNIT_LABELS.get(
            metadata_unit(metadata) or "", "resource-seconds")
    return table, facts


def format_status(table: pd.DataFrame, facts: dict) -> str:
    if facts["finished"]:
        state = "finished"
    elif facts["alive"]:
        state = "running (a driver holds the run)"
    else:
        state = "stopped: no driver holds it (resume with bench run SUITE --resume DIR)"
    done = int((table["state"] == "done").sum())
    begun = int(table["state"].isin(["running", "cut short"]).sum())
    lines = [f"{facts['suite']}: {state}; {done} of {facts['campaigns'] or len(table)} "
             f"campaigns done, {begun} started and not done"
             + (f"; journal at {facts['suite_s']:,.0f} s of suite time" if "suite_s" in facts
                else ""),
             f"compute in {facts['unit']}; trials: tuning trials finished (retrains apart); "
             "running: started and not finished", ""]
    width = max([4] + [len(str(t)) for t in table[S.TASK]])
    mwidth = max([6] + [len(str(m)) for m in table[S.METHOD]])
    lines.append(f"{'#':>3}  {'task':{width}}  {'method':{mwidth}}  {'seed':>5}  {'state':9} "
                 f"{'trials':>6} {'retr.':>5} {'run':>3}  {'spent / cap':>17}  incumbent")
    for r in table.itertuples(index=False):
        cap = ("?" if r.cap_s is None or pd.isna(r.cap_s) else
               f"{r.cap_s:,.0f}" if r.cap_s < 1e7 else f"{r.cap_s:.3g}")
        lines.append(f"{r.campaign:>3}  {str(r.task):{width}}  {str(r.method):{mwidth}}  "
                     f"{r.seed!s:>5}  {r.state:9} {r.trials:>6} {r.retrains:>5} {r.running:>3}  "
                     f"{f'{r.spent_s:,.0f} / {cap}':>17}  {r.incumbent}")
    return "\n".join(lines)
