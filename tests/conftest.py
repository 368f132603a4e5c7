from pathlib import Path

import pytest
import torch
from torch import nn

from bench.zoo.network import Network


@pytest.fixture
def break_on_result(monkeypatch):
    """Give a method class an ``on_result`` hook with a bug (it reads a metric that does
    not exist: ``KeyError: 'val_loss'``), to see how a run reports a plugin's own error."""
    def on_result(self, result):
        return result.metrics["val_loss"]  # no such metric: it is val_nll

    return lambda cls: monkeypatch.setattr(cls, "on_result", on_result)


@pytest.fixture
def tiny_net() -> Network:
    """Two linear layers: backbone ``0`` (stage 0) and head ``1``, with mu0 offset from 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net = Network(model, head="1", stage_of={"0.weight": 0, "0.bias": 0})
    with torch.no_grad():  # move away from the pretrained values
        for _, p in net.backbone_parameters():
            p.add_(torch.randn_like(p))
    return net


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The smoke suite run once through real Ray; tests read its records."""
    from bench.cli import main

    out = tmp_path_factory.mktemp("runs") / "smoke"
    suite = Path(__file__).resolve().parents[1] / "suites" / "smoke.toml"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    return out


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` need CUDA: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def devices() -> list:
    """The devices a device-parametrised test runs on: the CPU always, CUDA under ``gpu``."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
