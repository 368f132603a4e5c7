"""The data-emphasized ELBo method (docs/methods.md#data-emphasized-elbo) and its plain-ELBo
ablation."""

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize_scalar

from bench.analysis.curves import anytime_curves
from bench.contract import schema as S
from bench.contract.method import FINISHED, FitData
from bench.contract.protocol import TrialRequest
from bench.driver.campaign import Campaign, run_inline
from bench.driver.budget import Budget
from bench.testing import TINY_TASK, check_method
from bench.training.train import TrainingDiverged
from bench.worker.trial import TrialSpec, execute_trial, task_data
from bench.zoo.task import Task
from methods._de_elbo import DEELBo, PlainELBo
from methods._de_elbo_fit import profiled_prior

# digits through the pretrained small CNN at 8 px: seconds per run on one thread
TASK = Task(dataset="digits", n=100, backbone="small-cnn", image_size=8, steps=40,
            batch_size=16, test_limit=200, name="de-elbo-digits")


def fit_data(task: Task = TASK, seed: int = 0, validation=None) -> FitData:
    data = task_data(task, seed)
    return FitData(task, seed, data.train, validation, data.num_classes, data.network)


def gaussian_kl(m, s2, mu, v) -> float:
    """KL(N(m, s2 I) || N(mu, v I)), the textbook formula, in numpy."""
    d = len(m)
    return 0.5 * (d * s2 / v + float(np.sum((m - mu) ** 2)) / v - d + d * np.log(v)
                  - d * np.log(s2))


# 1. closed form ----------------------------------------------------------------------

@pytest.mark.parametrize("d, scale, sigma", [(7, 0.3, 0.05), (50, 1e-3, 1e-4), (3, 2.0, 1.0)])
def test_closed_form_variance_minimises_the_kl_and_gives_its_value(d, scale, sigma):
    rng = np.random.default_rng(d)
    mu = rng.normal(size=d)
    m = mu + scale * rng.normal(size=d)
    s2 = sigma ** 2
    sq = torch.tensor(float(np.sum((m - mu) ** 2)), dtype=torch.float64)
    var, kl = profiled_prior(sq, d, torch.tensor(s2, dtype=torch.float64))

    best = minimize_scalar(lambda log_v: gaussian_kl(m, s2, mu, np.exp(log_v)),
                           bracket=(np.log(s2), np.log(s2) + 5), method="brent",
                           options={"xtol": 1e-12})
    assert float(var) == pytest.approx(np.exp(best.x), rel=1e-5)
    assert float(kl) == pytest.approx(best.fun, rel=1e-9, abs=1e-12)
    # the plugged-in KL is (D/2) log(v*/sigma^2), and equals the full formula at v*
    assert float(kl) == pytest.approx(0.5 * d * np.log(float(var) / s2), rel=1e-9)
    assert float(kl) == pytest.approx(gaussian_kl(m, s2, mu, float(var)), rel=1e-9, abs=1e-12)


def test_gradient_through_the_profiled_variance_is_the_envelope_gradient():
    """d/dm, d/dsigma of KL(m, sigma, v*(m, sigma)) equal the partials at fixed v = v*."""
    torch.manual_seed(0)
    mu = torch.randn(20, dtype=torch.float64)
    m = (mu + 0.1 * torch.randn(20, dtype=torch.float64)).requires_grad_()
    sigma = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    _, kl = profiled_prior(((m - mu) ** 2).sum(), 20, sigma ** 2)
    g_m, g_s = torch.autograd.grad(kl, (m, sigma))
    with torch.no_grad():
        v = ((m - mu) ** 2).sum() / 20 + sigma ** 2
    d = 20
    full = 0.5 * (d * sigma ** 2 / v + ((m - mu) ** 2).sum() / v - d + d * torch.log(v)
                  - d * torch.log(sigma ** 2))
    f_m, f_s = torch.autograd.grad(full, (m, sigma))
    torch.testing.assert_close(g_m, f_m)
    torch.testing.assert_close(g_s, f_s)


# 2. no validation data ---------------------------------------------------------------

class Poison(tuple):
    """Stands in for a validation split: any use of it fails the test."""

    def _touched(self, *args, **kwargs):
        raise AssertionError("the method read validation data")

    __getitem__ = __iter__ = __len__ = __bool__ = __getattr__ = _touched


def test_the_method_never_receives_or_reads_validation_data():
    assert DEELBo.uses_validation is False and PlainELBo.uses_validation is False
    # what the harness hands a learned run
    seen = []

    class Spy(DEELBo):
        def fit(self, data, config, report):
            seen.append(data.validation)
            return super().fit(data, config, report)

    spec = TrialSpec(TINY_TASK, 0, Spy(lrs=(0.1,), objective_samples=1), threads=1)
    final = execute_trial(TrialRequest(0, "t0000", S.LEARNED, {"lr": 0.1}), spec,
                          lambda report: False)
    assert final.status == S.OK and seen == [None]
    # and fit does not touch a validation split even if one were there
    fitted = DEELBo(objective_samples=1).fit(fit_data(TINY_TASK, validation=Poison()),
                                             {"lr": 0.1}, lambda s, m: False)
    assert math.isfinite(fitted.objective)


# 3. the ablation over-regularises ----------------------------------------------------

def test_plain_elbo_over_regularises_compared_with_the_data_emphasized_elbo():
    """Same task, seed and lr: with kappa = 1 the KL term (weight 1/N instead of 1/D)
    holds the posterior mean at mu0 and shrinks the head's prior: the backbone moves far
    less from mu0, the learned head variance tau is tighter and the data are fit worse.
    (The learned lambda* = shift + sigma^2 itself is not smaller: kappa = 1 also inflates
    sigma, whose square dominates lambda* when the mean stays at mu0.)"""
    data = fit_data()
    de = DEELBo().fit(data, {"lr": 0.1}, lambda s, m: False).info
    plain = PlainELBo().fit(data, {"lr": 0.1}, lambda s, m: False).info
    assert de["kappa"] == pytest.approx((de["d_backbone"] + de["d_head"]) / TASK.n)
    assert plain["kappa"] == 1.0
    assert plain["backbone_shift"] < 0.01 * de["backbone_shift"]
    assert plain["tau"] < de["tau"]
    assert plain["train_nll"] > de["train_nll"] + 0.5
    assert plain["sigma"] > de["sigma"]


# 4. selection by the lowest final objective -------------------------------------------

def test_the_curve_keeps_the_run_with_the_lowest_final_objective():
    method = DEELBo(lrs=(0.1, 0.01, 1e-3))
    campaign = Campaign("test", TASK, "de-elbo", method, seed=0,
                        budget=Budget(workers=1, cap_s=1e6), clock0=time.perf_counter())
    run_inline(campaign)
    trials = pd.DataFrame(campaign.rows)
    assert list(trials[S.KIND]) == [S.LEARNED] * 3 and (trials[S.STATUS] == S.OK).all()
    assert [json.loads(c)["lr"] for c in trials[S.CONFIG]] == [0.1, 0.01, 1e-3]
    assert trials[S.OBJECTIVE].nunique() == 3
    curve = anytime_curves(trials)
    last = curve.sort_values(S.K).iloc[-1]
    winner = trials.loc[trials[S.OBJECTIVE].idxmin()]
    assert last[S.TRIAL_ID] == winner[S.TRIAL_ID]
    assert last[S.TEST_ACC] == winner[S.TEST_ACC]
    # charged: every run of the sweep
    assert last[S.COMPUTE_S] == pytest.approx(trials[S.RESOURCE_S].sum())
    # the method's own record of the incumbent agrees, and each run says its lr
    assert method.best_["trial_id"] == winner[S.TRIAL_ID]
    assert json.loads(winner[S.INFO])["lr"] == method.best_["lr"]
    assert json.loads(winner[S.INFO])["objective"] == pytest.approx(winner[S.OBJECTIVE])
    assert method.suggest("next") == FINISHED


# 5. the plugin contract ---------------------------------------------------------------

@pytest.mark.parametrize("cls", [DEELBo, PlainELBo])
def test_check_method_passes(cls):
    summary = check_method(cls, {"lrs": (0.1, 0.01)})
    # the first run is check_method's injected failure; the sweep goes on without it
    assert summary == {"trials": 2, "ok": 1, "retrains": 0, "tuning_s": summary["tuning_s"],
                       "bad_options_refused": 0}  # learned methods are not replayed


# 6. what a run records ----------------------------------------------------------------

def test_a_run_records_its_learned_hyperparameters_objective_and_lr():
    data = fit_data()
    reports = []
    fitted = DEELBo().fit(data, {"lr": 0.01}, lambda s, m: reports.append((s, m)) or False)
    info = fitted.info
    for key in ("lambda", "tau", "sigma", "objective", "lr", "kappa"):
        assert isinstance(info[key], float) and math.isfinite(info[key]), key
    assert info["lr"] == 0.01 and info["objective"] == fitted.objective
    assert info["lambda"] > info["sigma"] ** 2 and info["tau"] > info["sigma"] ** 2
    json.dumps(info)
    # the returned network holds the posterior mean m: its shift from mu0 is the recorded one
    net = fitted.network
    shift = sum(float(((p.detach() - net.mu0[n]) ** 2).sum())
                for n, p in net.backbone_parameters())
    assert shift / info["d_backbone"] == pytest.approx(info["backbone_shift"], rel=1e-5)
    assert info["lambda"] == pytest.approx(info["backbone_shift"] + info["sigma"] ** 2, rel=1e-4)
    # one report per epoch (ceil(100/16) = 7 steps) and one at the end
    assert [s for s, _ in reports] == [7, 14, 21, 28, 35, 40]
    assert fitted.steps_done == 40 and fitted.train_s > 0 and fitted.eval_s > 0
    # the same seed gives the same run
    again = DEELBo().fit(data, {"lr": 0.01}, lambda s, m: False)
    assert again.objective == fitted.objective


def test_a_stopped_run_has_no_objective_and_a_diverged_one_raises():
    data = fit_data()
    fitted = DEELBo().fit(data, {"lr": 0.01}, lambda s, m: True)
    assert fitted.steps_done == 7 and fitted.objective is None
    x, y = data.train
    bad = FitData(TASK, 0, (torch.full_like(x, float("nan")), y), None, data.num_classes,
                  data.make_network)
    with pytest.raises(TrainingDiverged):
        DEELBo().fit(bad, {"lr": 0.01}, lambda s, m: False)
