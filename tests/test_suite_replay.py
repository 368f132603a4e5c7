"""A replay suite is a suite with ``records`` (issue 14, item 6): one parser reads both, so
what they share is refused in the same words, and one driver writes the same metadata."""

import json

import pytest

import bench.driver.suite
from bench.cli import main
from bench.contract import schema as S
from bench.driver.replay_suite import parse_replay_suite, run_replay
from bench.driver.run_output import run_metadata
from bench.driver.suite import Suite, load_suite, parse_suite

REPLAY = """name = "r"
records = "published:cifar10-resnet50-v1"
seeds = [1001, 2001]
[budget]
cap_s = 1e12
[[tasks]]
name = "cifar10-resnet50-v1-N100"
[methods.grid]
[methods.random]
trials = 2
"""
LIVE = """name = "r"
seeds = [1001, 2001]
[budget]
cap_s = 1e12
[[tasks]]
dataset = "digits"
n = 60
backbone = "small-cnn"
image_size = 8
batch_size = 16
[methods.grid]
[methods.random]
trials = 2
"""

# (what to replace, with what, the one line both refuse it with)
COMMON_BAD = [
    ("seeds = [1001, 2001]", "seeds = [true]", "seeds must be a non-empty list of integers >= 0"),
    ("seeds = [1001, 2001]", "seeds = [-1001]", "seeds must be a non-empty list of integers >= 0"),
    ("seeds = [1001, 2001]", "seeds = [1001, 1001]", "seeds repeat"),
    ("seeds = [1001, 2001]", f"seeds = [{2**33}]", "seed must be an integer from 0 to 4294967295"),
    ('name = "r"', 'name = "../r"', "name must be a string of letters, digits"),
    ("cap_s = 1e12", "cap_s = true", "[budget]: budget.cap_s must be a number > 0, got True"),
    ("cap_s = 1e12", "cap_s = 1e12\nworkers = 0", "budget.workers must be an integer >= 1"),
    ('name = "r"', 'name = "r"\nreference = "tpe"',
     "reference must be one of the method labels (grid, random), got 'tpe'"),
    ("[methods.random]\ntrials = 2\n", "[methods.random]\ntrials = 0\n",
     "trials must be an integer >= 1"),
    ("[methods.grid]\n", "[methods.grid]\nnope = 1\n", "[methods.grid]"),
    ('name = "r"', 'name = "r"\nextra = 1', "unknown key 'extra' in suite"),
]


@pytest.mark.parametrize("old, new, message", COMMON_BAD)
def test_live_and_replay_suites_refuse_a_common_key_in_the_same_words(old, new, message):
    errors = []
    for text in (LIVE, REPLAY):
        assert old in text
        with pytest.raises(bench.driver.suite.BenchError) as err:
            parse_suite(text.replace(old, new))
        errors.append(str(err.value))
    assert message in errors[0] and "\n" not in errors[0]
    assert errors[0] == errors[1]  # the same check, not a copy that drifted


def test_a_replay_and_a_live_suite_are_read_by_the_same_code(monkeypatch):
    seen = []
    for name in ("_seeds", "_methods", "_reference", "check_starts"):
        real = getattr(bench.driver.suite, name)
        monkeypatch.setattr(bench.driver.suite, name,
                            lambda *a, _real=real, _name=name, **k: (seen.append(_name),
                                                                     _real(*a, **k))[1])
    live, replay = parse_suite(LIVE), parse_replay_suite(REPLAY)
    assert isinstance(live, Suite) and isinstance(replay, Suite)
    assert not live.replay and live.records is None
    assert replay.replay and replay.records.name == "published:cifar10-resnet50-v1"
    calls = {name: seen.count(name) for name in set(seen)}
    # each once per suite; check_starts once per method and suite
    assert calls == {"_seeds": 2, "_methods": 2, "_reference": 2, "check_starts": 4}


def test_load_suite_returns_whichever_the_file_is(tmp_path):
    (tmp_path / "live.toml").write_text(LIVE)
    (tmp_path / "replay.toml").write_text(REPLAY)
    assert not load_suite(tmp_path / "live.toml").replay
    replay = load_suite(tmp_path / "replay.toml")
    assert replay.replay and [t.name for t in replay.tasks] == ["cifar10-resnet50-v1-N100"]
    assert replay.reference == "grid"  # the same default as a live suite's


@pytest.mark.parametrize("old, new, message", [
    ('name = "cifar10-resnet50-v1-N100"', 'name = "cifar10-resnet50-v1-N100"\ncap_s = true',
     "task 1: task cap_s must be a number > 0, got True"),
    ('name = "cifar10-resnet50-v1-N100"', 'name = "cifar10-resnet50-v1-N100"\ncap_s = -5',
     "task 1: task cap_s must be a number > 0, got -5"),
    ('name = "cifar10-resnet50-v1-N100"', "name = 100", "task 1: name must be a string"),
    ("[methods.grid]", '[[tasks]]\nname = "cifar10-resnet50-v1-N100"\n[methods.grid]',
     "two tasks share a name"),
    ("seeds", "bo = 1\nseeds", "bo must be true or false, got 1"),
    ("seeds = [1001, 2001]", "seeds = [1001, 4001]", "seed 4001 is not in the records"),
    # issue 26: a cap below every recorded trial ended each one over budget, exit 0
    ("cap_s = 1e12", "cap_s = 1", "task cifar10-resnet50-v1-N100: cap_s 1 GPU-seconds is "
     "smaller than its cheapest recorded trial"),
    ('name = "cifar10-resnet50-v1-N100"', 'name = "cifar10-resnet50-v1-N100"\ncap_s = 2',
     "cap_s 2 GPU-seconds is smaller than its cheapest recorded trial"),
])
def test_bad_replay_values_are_refused_as_live_ones(old, new, message):
    with pytest.raises(bench.driver.suite.BenchError) as err:
        parse_suite(REPLAY.replace(old, new))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_replay_suite_may_name_its_reference():
    suite = parse_suite(REPLAY.replace('name = "r"', 'name = "r"\nreference = "random"'))
    assert suite.reference == "random"


def test_replay_keys_without_records_are_refused():
    with pytest.raises(bench.driver.suite.BenchError,
                       match="records_method is a replay suite's key"):
        parse_suite(LIVE.replace('name = "r"', 'name = "r"\nrecords_method = "grid"'))


@pytest.mark.parametrize("text", [LIVE, LIVE.replace('"digits"', '"nope"')])
def test_bench_replay_refuses_a_plain_suite_in_one_line(tmp_path, capsys, text):
    (tmp_path / "live.toml").write_text(text)  # at once: its tasks are not even read
    assert main(["replay", str(tmp_path / "live.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a replay suite" in err and "bench run" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_drivers_refuse_the_other_kind_of_suite(tmp_path):
    from bench.driver.run import run_suite

    with pytest.raises(bench.driver.suite.BenchError, match="replays records: bench replay"):
        run_suite(parse_suite(REPLAY), tmp_path / "out")
    with pytest.raises(bench.driver.suite.BenchError, match="is not a replay suite"):
        run_replay(parse_suite(LIVE), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bench_run_of_a_replay_suite_refuses_resume_and_address(tmp_path, capsys):
    (tmp_path / "replay.toml").write_text(REPLAY)
    for flag in (["--resume", str(tmp_path)], ["--address", "127.0.0.1:1"]):
        assert main(["run", str(tmp_path / "replay.toml"), *flag]) == 2
        err = capsys.readouterr().err
        assert f"{flag[0]} does not apply; bench replay" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay.toml"]


@pytest.mark.ray
def test_a_replay_writes_the_metadata_a_live_run_does(tmp_path):
    suite = parse_replay_suite(REPLAY.replace('name = "r"', 'name = "r"\nreference = "random"'))
    meta = json.loads((run_replay(suite, tmp_path / "out", progress=False)
                       / S.METADATA_FILE).read_text())
    assert set(run_metadata(suite)) <= set(meta)  # what every run's metadata starts with
    assert {"started", "ended", "tasks", "reference"} <= set(meta)
    assert meta["tasks"] == ["cifar10-resnet50-v1-N100"] and meta[S.REFERENCE] == "random"
    assert meta["backend"] == "replay" and meta["records"] == "published:cifar10-resnet50-v1"
    assert meta["compute_unit"] == S.GPU_S and meta["simulated_s"] > 0
    assert meta["budget"]["cap_s"] == 1e12 and meta["seeds"] == [1001, 2001]


@pytest.mark.ray
def test_bench_run_of_a_replay_suite_replays_it(tmp_path, capsys):
    (tmp_path / "replay.toml").write_text(REPLAY)
    assert main(["run", str(tmp_path / "replay.toml"), "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    meta = json.loads((tmp_path / "out" / S.METADATA_FILE).read_text())
    assert meta["backend"] == "replay" and "ended" in meta
    assert (tmp_path / "out" / S.TRIALS_FILE).is_file()
    assert (tmp_path / "out" / S.REPORTS_FILE).is_file()


def test_the_suite_parser_loads_the_records_code_only_for_a_replay_suite():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\n"
            "import bench.driver.suite\n"
            "bare = sorted(m for m in ('torch', 'pandas', 'ray') if m in sys.modules)\n"
            "bench.driver.suite.load_suite('suites/smoke.toml')\n"
            "print(bare, sorted(m for m in ('pandas', 'bench.driver.replay', "
            "'bench.driver.suite_records') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[] []"
