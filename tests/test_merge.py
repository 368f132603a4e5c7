"""One view of several run directories: bench report and bench plot merge runs of the same
tasks, seeds and unit (against the first one's reference), and refuse others in one line with nothing written; a run
of more than 6 tasks is drawn as small multiples, pages of at most 24 panels, filled evenly (issue 27)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.plots import plot_tradeoff
from bench.cli import main
from bench.contract import schema as s


def _replay(root: Path, name: str, methods: str, seeds="[1001]",
            task="cifar10-resnet50-N100") -> Path:
    suite = root / f"{name}.toml"
    suite.write_text(f'name = "{name}"\nrecords = "published:cifar10-resnet50"\nseeds = {seeds}\n'
                     f'[budget]\ncap_s = 1e12\n[[tasks]]\nname = "{task}"\n{methods}')
    assert main(["replay", str(suite), "--out", str(root / name), "--quiet"]) == 0
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two replays of one task and seed (grid + random; grid + TPE: the grid repeated, as
    the README's main job repeats it) and runs that differ in seeds or tasks."""
    root = tmp_path_factory.mktemp("merge")
    return {"a": _replay(root, "a", "[methods.grid]\n[methods.random]\ntrials = 4\n"),
            "b": _replay(root, "b", "[methods.grid]\n[methods.tpe]\ntrials = 4\n"),
            "seeds": _replay(root, "seeds", "[methods.tpe]\ntrials = 4\n", "[2001]"),
            "tasks": _replay(root, "tasks", "[methods.tpe]\ntrials = 4\n",
                             task="cifar10-resnet50-N1000")}


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_report_and_plot_merge_two_run_directories(runs, tmp_path, capsys):
    out = tmp_path / "both"
    assert main(["report", str(runs["a"]), str(runs["b"]), "--out", str(out)]) == 0
    text = (out / s.REPORT_FILE).read_text()
    table = [line.split("|")[1].strip() for line in text.splitlines()
             if line.startswith("| ") and "| search |" in line]
    assert sorted(table) == ["grid", "random", "tpe"]  # each once: the grid from a
    assert f"`grid` is read from the first directory that has it; its runs in `{runs['b']}`" \
        in text
    assert main(["plot", str(runs["a"]), str(runs["b"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "tradeoff.png",
                                                     "tradeoff.svg"]
    before = _files(runs["b"])
    copy = tmp_path / "a"
    shutil.copytree(runs["a"], copy)
    assert main(["plot", str(copy), str(runs["b"])]) == 0  # no --out: into the first
    assert "tpe" in (copy / "tradeoff.svg").read_text()
    assert _files(runs["b"]) == before
    capsys.readouterr()


def _other_unit(run: Path) -> None:
    meta = json.loads((run / s.METADATA_FILE).read_text())
    (run / s.METADATA_FILE).write_text(json.dumps({**meta, "compute_label": "TPU-seconds"}))


def _other_reference(run: Path) -> None:
    meta = json.loads((run / s.METADATA_FILE).read_text())
    (run / s.METADATA_FILE).write_text(json.dumps({**meta, s.REFERENCE: "tpe"}))


@pytest.mark.parametrize("command", ["report", "plot"])
@pytest.mark.parametrize("other, change, message", [
    ("seeds", None, "hold different seeds (only {a} has 1001; only {o} has 2001)"),
    ("tasks", None, "hold different tasks (only {a} has cifar10-resnet50-N100; only {o} has "
                    "cifar10-resnet50-N1000)"),
    ("b", _other_unit, "hold different compute units ({a}: A100 GPU-seconds, {o}: "
                       "TPU-seconds)"),
])
def test_mismatched_runs_are_refused_in_one_line_with_nothing_written(
        runs, tmp_path, monkeypatch, capsys, command, other, change, message):
    monkeypatch.chdir(tmp_path)  # short names: the whole line is shown
    first, second = "first", "second"
    shutil.copytree(runs["a"], first)
    shutil.copytree(runs[other], second)
    if change:
        change(Path(second))
    before = _files(tmp_path)
    assert main([command, first, second]) == 2
    assert main([command, first, second, "--out", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0] == err[1]
    assert message.format(a=first, o=second) in err[0], err[0]
    assert err[0].startswith(f"bench: error: {command}: ")
    assert _files(tmp_path) == before  # nothing written, nothing made


def _many_tasks(tasks: int) -> pd.DataFrame:
    """A search and a learned method on each task, one seed (small multiples of 2 kinds)."""
    rows = []
    for t in range(tasks):
        for method, kind in (("grid", s.SEARCH), ("de-elbo", s.LEARNED)):
            base = dict.fromkeys(s.TRIAL_COLUMNS)
            base.update({s.SUITE: "m", s.TASK: f"task{t:02d}", s.METHOD: method,
                         s.PLUGIN: method, s.SEED: 0, s.STATUS: s.OK, s.ENDED_S: 1.0,
                         s.RESOURCE_S: 10.0, s.TEST_ACC: 0.5 + t / 100, s.TEST_NLL: 1.0})
            if kind == s.SEARCH:
                rows += [{**base, s.TRIAL_ID: "t0", s.KIND: s.SEARCH, s.VAL_NLL: 1.0,
                          s.TEST_ACC: None},
                         {**base, s.TRIAL_ID: "t0-retrain", s.KIND: s.RETRAIN,
                          s.RETRAIN_OF: "t0", s.ENDED_S: 2.0}]
            else:
                rows.append({**base, s.TRIAL_ID: "t0", s.KIND: s.LEARNED, s.OBJECTIVE: 1.0})
    return pd.DataFrame(rows, columns=list(s.TRIAL_COLUMNS))


def test_more_than_six_tasks_are_small_multiples_in_even_pages_of_up_to_24(tmp_path, capsys):
    trials = _many_tasks(13)  # 13 tasks x 2 kinds = 26 panels: pages of 18 and 8, in rows of 6
    paths = plot_tradeoff(trials, tmp_path / "tradeoff", band="none")
    assert [p.name for p in paths] == ["tradeoff.png", "tradeoff.svg", "tradeoff-2.png",
                                       "tradeoff-2.svg"]
    page1, page2 = ((p.read_text().count("task")) for p in paths[1::2])
    assert "task08" in paths[1].read_text() and "task09" in paths[3].read_text()
    assert "task09" not in paths[1].read_text() and "task08" not in paths[3].read_text()
    assert page1 > page2
    # a subset on one page: the second page of the earlier figure is removed
    paths = plot_tradeoff(trials, tmp_path / "tradeoff", band="none", tasks="task0[0-2]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tradeoff.png", "tradeoff.svg"]
    svg = paths[1].read_text()
    assert "task02" in svg and "task03" not in svg
    run = tmp_path / "run"
    run.mkdir()
    trials.to_parquet(run / s.TRIALS_FILE)
    assert main(["plot", str(run), "--tasks", "nothing*"]) == 2
    err = capsys.readouterr().err
    assert "plot: no task matches --tasks 'nothing*'; the tasks are task00" in err
    assert sorted(p.name for p in run.iterdir()) == [s.TRIALS_FILE]


def test_runs_with_different_references_merge_against_the_first_ones(runs, tmp_path,
                                                                      monkeypatch, capsys):
    """MARS-SP's grid run read beside default's L2-SP grid: the first reference wins."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(runs["a"], "first")
    shutil.copytree(runs["b"], "second")
    _other_reference(Path("second"))
    assert main(["report", "first", "second", "--out", "out"]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert ("Every method is compared with `grid` (the first directory's reference); "
            "`second` named `tpe`.") in text
    assert "Reference: grid." in text and "Reference: tpe" not in text
    capsys.readouterr()


def _curvy_tasks(tasks: int) -> pd.DataFrame:
    """Six search trials a task, each retrained, computes from 10 to 1M and accuracies a
    few hundredths apart (tick labels such as "91.4" and "500k"), and a learned method."""
    rows = []
    for t in range(tasks):
        base = dict.fromkeys(s.TRIAL_COLUMNS)
        base.update({s.SUITE: "m", s.TASK: f"task{t:02d}", s.SEED: 0, s.STATUS: s.OK,
                     s.TEST_NLL: 1.0})
        for i in range(6):
            cost, acc = 10.0 ** (1 + i), 0.92 + (0.0005 if t % 2 else 0.05) * i
            rows += [{**base, s.METHOD: "grid", s.PLUGIN: "grid", s.TRIAL_ID: f"t{i}",
                      s.KIND: s.SEARCH, s.VAL_NLL: 1.0 - i / 10, s.ENDED_S: 2.0 * i,
                      s.RESOURCE_S: cost},
                     {**base, s.METHOD: "grid", s.PLUGIN: "grid", s.TRIAL_ID: f"t{i}-retrain",
                      s.KIND: s.RETRAIN, s.RETRAIN_OF: f"t{i}", s.ENDED_S: 2.0 * i + 1,
                      s.RESOURCE_S: cost, s.TEST_ACC: min(acc, 1.0)}]
            rows.append({**base, s.METHOD: "de-elbo", s.PLUGIN: "de-elbo", s.TRIAL_ID: f"l{i}",
                         s.KIND: s.LEARNED, s.OBJECTIVE: -i, s.ENDED_S: 2.0 * i,
                         s.RESOURCE_S: cost, s.TEST_ACC: min(acc, 1.0)})
    return pd.DataFrame(rows, columns=list(s.TRIAL_COLUMNS))


@pytest.mark.parametrize("tasks", [3, 7])  # one row per task; small multiples
def test_no_two_panels_texts_meet(tasks, tmp_path, monkeypatch):
    """The panels are laid out at fixed distances (``plots.GAPS``), not measured: each
    panel's drawing (tick labels, axis labels, title) stays clear of every other's."""
    from bench.analysis import plots
    from bench.driver import forked

    monkeypatch.setattr(forked, "default_jobs", lambda: 1)  # pages drawn here, looked at
    figures, measure = [], plots.tight_bbox  # each page, as its files are saved
    monkeypatch.setattr(plots, "tight_bbox", lambda fig: figures.append(fig) or measure(fig))
    plot_tradeoff(_curvy_tasks(tasks), tmp_path / "tradeoff")
    assert len(figures) == 1
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
        labels = [ax.get_yticklabels()[1].get_text() for ax in fig.axes]
        assert any(len(label) >= 4 for label in labels), labels  # wide ticks drawn
        assert not [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes)
                    if i < j and a.overlaps(b)]
