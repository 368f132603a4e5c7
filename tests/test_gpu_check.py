"""The GPU check's preparation, on the CPU: each variant's suite is the base text with its
lines rewritten (and parses), and without CUDA the check refuses at once, writing nothing."""

import tomllib
from pathlib import Path

import pytest

from bench.cli import main
from bench.gpu_check import VARIANTS, variant_text

ROOT = Path(__file__).resolve().parents[1]
BASE = (ROOT / "suites" / "gpu-quick.toml").read_text()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_each_variant_rewrites_only_its_lines(variant):
    raw, base = tomllib.loads(variant_text(BASE, variant, "gpu-quick")), tomllib.loads(BASE)
    assert raw["name"] == f"gpu-check-{variant.name}"
    assert raw["budget"]["workers"] == variant.workers
    assert raw["budget"]["gpus_per_worker"] == variant.gpus
    assert raw["budget"]["cap_s"] == base["budget"]["cap_s"]
    assert raw["tasks"][0].get("precision") == ("bf16" if variant.bf16 else None)
    assert {k: v for k, v in raw["tasks"][0].items() if k != "precision"} == base["tasks"][0]
    assert set(raw["methods"]) == ({"grid"} if variant.grid_only else set(base["methods"]))


def test_a_suite_whose_lines_are_not_there_once_is_refused():
    from bench.contract.errors import BenchError
    with pytest.raises(BenchError, match="occur once"):
        variant_text(BASE.replace("workers = 4", "workers=4"), VARIANTS[0], "x.toml")


def test_without_cuda_the_check_refuses_and_writes_nothing(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    out = tmp_path / "check"
    assert main(["benchmark", "gpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs CUDA" in err
    assert not out.exists()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_each_variant_is_a_suite_the_harness_reads(variant):
    from bench.driver.suite import parse_suite

    suite = parse_suite(variant_text(BASE, variant, "gpu-quick"), "gpu-quick.toml")
    assert suite.budget.unit == "gpu" and suite.budget.charge_rate == variant.gpus
    assert suite.tasks[0].precision == ("bf16" if variant.bf16 else "float32")
    assert [m.label for m in suite.methods] == (
        ["grid"] if variant.grid_only else ["grid", "de-elbo", "laplace-marglik", "ntk-marglik"])


def test_the_device_script_refuses_bad_arguments_in_one_line(tmp_path):
    import subprocess

    script = ROOT / "scripts" / "gpu-check.sh"
    for args, message in (([], "usage"), ([str(tmp_path / "none")], "no wheelhouse"),
                          ([str(tmp_path), str(tmp_path)], "exists")):
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
