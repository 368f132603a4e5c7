import json
import subprocess
import sys

import pytest

from bench.cli import main


@pytest.mark.parametrize("argv, message", [
    (["train", "--n", "abc"], "invalid int value"),
    (["train", "--dataset", "nope"], "unknown data set 'nope'"),
    (["train", "--backbone", "nope"], "unknown backbone 'nope'"),
    (["train", "--regularizer", "nope"], "unknown regularizer 'nope'"),
    (["train", "--hp", "gamma=1"], "no hyperparameter gamma"),
    (["train", "--hp", "alpha"], "expected NAME=NUMBER"),
    (["train", "--lr", "-1"], "lr must be a positive number"),
    (["train", "--steps", "0"], "task steps must be an integer >= 1, got 0"),
    (["train", "--backbone", "efficientnet-lite0", "--image-size", "28"], "image_size >= 32"),
    (["train", "--dataset", "digits", "--n", "5000"], "exceeds the 1438 training examples"),
    (["list", "things"], "invalid choice"),
    ([], "required"),
    # issue 16: numbers checked before anything runs, and no traceback
    (["train", "--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),
    (["train", "--seed", str(2**64)], "--seed must be an integer from 0 to 4294967295"),
    (["train", "--dataset", "digits", "--n", "5", "--batch-size", "5"],
     "n = 5 is smaller than the 10 classes of digits"),
    (["train", "--batch-size", "1000000000000"], "batch_size 1000000000000 is larger than n"),
    (["train", "--hp", "alpha=-1"], "hyperparameter alpha must be a finite number >= 0"),
    (["benchmark", "loop", "--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["benchmark", "--repeats", "-2"], "--repeats must be an integer >= 1, got -2"),
    (["benchmark", "harness", "--workers", "0"], "--workers must be an integer >= 1"),
    (["benchmark", "ntk", "--ns", "0"], "--ns must be an integer >= 1, got 0"),
    (["benchmark", "harness", "--run-dir", "/nonexistent"], "/nonexistent is not a run dir"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert message in err and err.count("\n") == 1 and err.startswith("bench: error:")
    assert captured.out == ""  # refused before the first line of output


# {tmp}: an empty directory; {suite}: a good one-task suite in it; {bad_resume}: a run
# directory whose suite.toml is malformed; {suite_deep}: a replay suite nested too deeply;
# {replay_escape}: a replay suite whose name would put its default run directory outside
RUN_BAD = [
    (["run", "{suite}", "--out", "{tmp}/out", "--address", "127.0.0.1:1"],
     "--address 127.0.0.1:1: no Ray cluster answers there within 5 s"),
    (["run", "{suite}", "--out", "{tmp}/out", "--address", "nonsense"],
     "--address 'nonsense': expected HOST:PORT"),
    (["run", "{suite}", "--resume", "{bad_resume}"],
     "cannot resume {bad_resume}: its suite.toml: malformed TOML"),
    (["run", "{suite}", "--out", "/proc/bench-x"],
     "output /proc/bench-x is not writable: cannot create a file in /proc"),
    (["replay", "{suite_deep}", "--out", "{tmp}/out"], "malformed TOML: nested too deeply"),
    (["replay", "{replay_escape}"], "name must be a string of letters, digits"),  # ../x
    (["run", "{suite}", "--out", "{tmp}/out", "--out", "{tmp}/out2", "--resume", "{tmp}"],
     "give --out or --resume, not both"),
]

SUITE = """name = "ok"
[[tasks]]
dataset = "digits"
n = 60
backbone = "small-cnn"
image_size = 8
batch_size = 16
[methods.random]
trials = 1
"""


@pytest.mark.parametrize("argv, message", RUN_BAD)
def test_bad_run_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "ok.toml").write_text(SUITE)
    (tmp_path / "deep.toml").write_text("x = " + "[" * 5000 + "\n")
    (tmp_path / "escape.toml").write_text(
        'name = "../escaped"\nrecords = "published:cifar10-resnet50"\nseeds = [1001]\n'
        '[[tasks]]\nname = "cifar10-resnet50-N100"\n[methods.random]\ntrials = 2\n')
    bad_resume = tmp_path / "stopped"
    bad_resume.mkdir()
    (bad_resume / "journal.jsonl").write_text("")
    (bad_resume / "suite.toml").write_text("name = [\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    fill = {"tmp": tmp_path, "suite": tmp_path / "ok.toml", "bad_resume": bad_resume,
            "suite_deep": tmp_path / "deep.toml", "replay_escape": tmp_path / "escape.toml"}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert sorted(p.name for p in bad_resume.iterdir()) == ["journal.jsonl", "suite.toml"]


def test_console_entry_point_exits_2_on_bad_flags():
    proc = subprocess.run([sys.executable, "-m", "bench", "train", "--n", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_list_names_every_registered_thing(capsys):
    for what, names in [("datasets", ["animal-mnist", "mnist-5k", "fashion-mnist", "digits",
                                       "cifar10"]),
                        ("backbones", ["efficientnet-lite0", "small-cnn", "tv:"]),
                        ("regularizers", ["wd", "l2sp", "mars-sp", "mars-sp-keras",
                                          "mars-sp-fro", "layerwise"]),
                        ("methods", ["grid", "random", "tpe", "tpe-prune", "de-elbo", "elbo",
                                     "laplace-marglik", "ntk-marglik"])]:
        assert main(["list", what]) == 0
        out = capsys.readouterr().out
        assert all(name in out for name in names)


def test_train_prints_final_test_metrics(capsys):
    argv = ["train", "--dataset", "digits", "--n", "300", "--backbone", "small-cnn",
            "--image-size", "16", "--regularizer", "mars-sp", "--hp", "lambda_bb=5",
            "--lr", "0.05", "--steps", "40", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["regularizer"] == "mars-sp" and summary["steps"] == 40
    assert summary["hyperparameters"]["lambda_bb"] == 5.0
    assert summary["test_acc"] > 0.3  # chance: 0.1


def test_benchmark_ntk_prints_the_scaling_table(capsys):
    assert main(["benchmark", "ntk", "--ns", "20", "40", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("NTK vs full-data Laplace hyper-step time, small-cnn")
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["20", "40"] and rows[0][2] == rows[0][4] == "1.00"


def test_a_method_hook_that_raises_is_named_with_its_traceback(tmp_path, break_on_result,
                                                                capsys):
    """A bug in a method's own hook stops the run with exit 1, the method, the hook and the
    traceback: it is not charged to a trial (here through bench replay: no Ray needed)."""
    import baselines

    break_on_result(baselines.RandomSearch)
    suite = tmp_path / "replay.toml"
    suite.write_text('name = "hook"\nrecords = "published:cifar10-resnet50"\nseeds = [1001]\n'
                     '[budget]\ncap_s = 1e12\n[[tasks]]\nname = "cifar10-resnet50-N100"\n'
                     '[methods.random]\ntrials = 3\n')
    assert main(["replay", str(suite), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bench: method 'random' raised in on_result(): KeyError: 'val_loss'\n")
    assert "Traceback" in err and 'result.metrics["val_loss"]' in err


def test_a_reader_that_goes_away_is_not_an_error():
    """``bench list records | head -1``: the pipe closes before bench has written all."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", "list", "records"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before bench writes a line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
