"""The GPU speed options of a task: ``precision = "bf16"`` (autocast of the training
forward pass and loss) and ``channels_last`` (memory format). Both run on the CPU too
(autocast's device_type "cpu"), so they are tested here on a tiny real task: small-cnn on
300 digits for two epochs.

Tolerances. bf16 keeps 8 bits of mantissa, so each step's logits differ from float32's by
about 1e-2 relative; over 20 steps that moved the test accuracy by one point and the test
NLL by 0.03% here. The checks allow 3 points of accuracy (9 of the 300 test examples) and
2% of NLL/objective. channels_last changes the layout only: the numbers agree to float32
rounding (measured 1e-7 relative; held to 1e-5).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from bench.contract.errors import BenchError
from bench.contract.method import FitData
from bench.contract.plugins import build_method
from bench.training.metrics import evaluate
from bench.training.train import TrainConfig
from bench.worker.fit import standard_fit
from bench.zoo.task import Task

BASE = Task(dataset="digits", n=300, backbone="small-cnn", image_size=8, steps=20,
            batch_size=32, test_limit=300, name="precision-digits")
HP = {"lr": 0.05, "alpha": 1e-3, "beta": 1e-3}
OPTIONS = {"de-elbo": {"lrs": [0.1], "objective_samples": 2},
           "laplace-marglik": {"lrs": [0.05], "hyper_steps": 5, "rounds": 2},
           "ntk-marglik": {"lrs": [0.05], "hyper_steps": 2, "subset_size": 16, "rounds": 2}}
LR = {"de-elbo": 0.1, "laplace-marglik": 0.05, "ntk-marglik": 0.05}


@dataclasses.dataclass
class Run:
    acc: float
    nll: float
    objective: float | None
    info: dict
    train_dtypes: set  # the head's output dtype in training-mode forward passes
    eval_dtypes: set  # ... in eval-mode ones (evaluation, objectives)
    conv_inputs_channels_last: set  # whether multichannel_conv's inputs were
    weights_channels_last: bool
    data_channels_last: bool


def run(method: str | None = None, **options) -> Run:
    """Train on ``BASE`` with ``options``: the standard fit on the 80% split, or a learned
    method on all N; record what the forward passes computed in."""
    task = dataclasses.replace(BASE, **options)
    data = task.load(0)
    seen = {"train": set(), "eval": set(), "layout": set()}
    nets = []

    def make_network():
        net = data.network()
        conv = multichannel_conv(net.model)
        head = net.model.get_submodule(net.head)
        head.register_forward_hook(lambda m, i, out: seen["train" if m.training else "eval"]
                                   .add(out.dtype))
        conv.register_forward_pre_hook(lambda m, i: seen["layout"].add(
            i[0].is_contiguous(memory_format=torch.channels_last)))
        nets.append(net)
        return net

    if method is None:
        train, validation = data.split()
        fit_data = FitData(task, 0, train, validation, data.num_classes, make_network,
                           standard_fit)
        fitted = standard_fit(fit_data, HP, lambda step, m: False, report_validation=False)
    else:
        fit_data = FitData(task, 0, data.train, None, data.num_classes, make_network,
                           standard_fit)
        fitted = build_method(method, OPTIONS[method]).fit(fit_data, {"lr": LR[method]},
                                                           lambda step, m: False)
    scores = evaluate(fitted.network.model, *data.test)
    conv = multichannel_conv(nets[0].model)
    return Run(scores["acc"], scores["nll"], fitted.objective, fitted.info, seen["train"],
               seen["eval"], seen["layout"],
               conv.weight.is_contiguous(memory_format=torch.channels_last),
               data.train[0].is_contiguous(memory_format=torch.channels_last))


def multichannel_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution with several input channels (with one, the two layouts are
    the same memory, so only such a layer tells them apart)."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)


@pytest.fixture(scope="module")
def float32() -> Run:
    return run()


# ------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("options, named", [
    ({"precision": "fp16"}, "task precision"), ({"precision": "bfloat16"}, "task precision"),
    ({"precision": None}, "task precision"), ({"channels_last": "yes"}, "task channels_last"),
    ({"channels_last": 1}, "task channels_last")])
def test_a_bad_option_is_refused_with_one_line(options, named):
    with pytest.raises(BenchError) as err:
        dataclasses.replace(BASE, **options)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_the_loop_refuses_an_unknown_precision():
    with pytest.raises(BenchError, match="precision must be one of 'float32', 'bf16'"):
        TrainConfig(lr=0.1, steps=1, precision="half")


# ------------------------------------------------------------------------- defaults


def test_the_default_is_exact_float32_in_the_usual_layout(float32):
    assert (BASE.precision, BASE.channels_last) == ("float32", False)
    assert float32.train_dtypes == float32.eval_dtypes == {torch.float32}
    assert float32.conv_inputs_channels_last == {False}
    assert not float32.weights_channels_last
    assert "precision" not in float32.info  # the default's records are unchanged
    # CUDA's TF32 convolutions and products are off: float32 is float32 on a GPU too
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


# ------------------------------------------------------------------------- bf16


def test_bf16_trains_the_standard_fit_in_bf16_and_scores_in_float32(float32):
    bf16 = run(precision="bf16")
    assert bf16.train_dtypes == {torch.bfloat16}
    assert bf16.eval_dtypes == {torch.float32}  # evaluation is not autocast
    assert bf16.info["precision"] == "bf16"
    assert abs(bf16.acc - float32.acc) <= 0.03
    assert math.isclose(bf16.nll, float32.nll, rel_tol=0.02)
    assert bf16.acc > 0.5  # it learned: chance is 0.1


def test_bf16_runs_de_elbos_sampled_forward_in_bf16_and_its_objective_in_float32():
    reference, bf16 = run("de-elbo"), run("de-elbo", precision="bf16")
    assert reference.train_dtypes == {torch.float32}
    assert bf16.train_dtypes == {torch.bfloat16}
    assert bf16.eval_dtypes == {torch.float32}  # the final sampled objective
    assert "precision" not in reference.info and bf16.info["precision"] == "bf16"
    assert math.isclose(bf16.objective, reference.objective, rel_tol=0.02)
    assert abs(bf16.acc - reference.acc) <= 0.03


@pytest.mark.parametrize("method", ["laplace-marglik", "ntk-marglik"])
def test_the_marginal_likelihood_methods_ignore_bf16_and_say_so(method):
    reference, asked = run(method), run(method, precision="bf16")
    assert asked.train_dtypes == asked.eval_dtypes == {torch.float32}
    assert asked.objective == reference.objective  # the very same float32 run
    assert asked.info["precision"] == "float32"
    assert "'bf16' ignored" in asked.info["precision_note"]
    assert "precision" not in reference.info and "precision_note" not in reference.info


# ------------------------------------------------------------------------- channels_last


@pytest.mark.parametrize("method", [None, "de-elbo", "laplace-marglik", "ntk-marglik"])
def test_channels_last_lays_out_the_network_and_every_batch_and_changes_no_number(method):
    reference, laid_out = run(method), run(method, channels_last=True)
    assert laid_out.weights_channels_last and laid_out.data_channels_last
    # laplace-torch's fits run in the standard layout (it views parameters flat); training
    # and everything else in channels_last
    expected = {True, False} if method == "laplace-marglik" else {True}
    assert laid_out.conv_inputs_channels_last == expected
    assert reference.conv_inputs_channels_last == {False}
    assert math.isclose(laid_out.nll, reference.nll, rel_tol=1e-5)
    assert laid_out.acc == pytest.approx(reference.acc, abs=1e-6)
    if method:
        assert math.isclose(laid_out.objective, reference.objective, rel_tol=1e-5)
