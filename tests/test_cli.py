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
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("bench: error:")


def test_console_entry_point_exits_2_on_bad_flags():
    proc = subprocess.run([sys.executable, "-m", "bench", "train", "--n", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_list_names_every_registered_thing(capsys):
    for what, names in [("datasets", ["animal-mnist", "mnist-5k", "fashion-mnist", "digits",
                                       "cifar10"]),
                        ("backbones", ["efficientnet-lite0", "small-cnn", "tv:"]),
                        ("regularizers", ["wd", "l2sp", "mars-sp", "mars-sp-fro", "layerwise"]),
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
