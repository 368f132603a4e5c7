"""Tests of the marginal-likelihood methods (methods/_laplace.py, methods/_ntk.py)."""

import itertools
import json
import math
import statistics

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.contract.errors import BenchError
from bench.contract.method import FitData
from bench.testing import TINY_TASK, check_method
from bench.zoo.network import Network
from methods._laplace import LaplaceEstimator, LaplaceMarglik, laplace_log_marglik
from methods._ntk import NTKMarglik, draw_subset, ntk_bound, subset_terms
from methods._marglik import PriorGroups, RoundRecord, RoundSchedule
from methods._marglik_fit import marglik_fit

ONLINE_EVERY_EPOCH = RoundSchedule("online", burnin_epochs=0, every_epochs=1)


def _offset_backbone(net: Network, scale: float = 0.3) -> Network:
    """Move the backbone away from mu0 so that a prior mean of 0 would be wrong."""
    with torch.no_grad():
        for _, p in net.backbone_parameters():
            p.add_(scale * torch.randn_like(p))
    return net


def _set_precisions(groups: PriorGroups, values) -> None:
    with torch.no_grad():
        groups.log_delta.copy_(torch.tensor(values, dtype=torch.float32).log())


# ---------------------------------------------------------------- 1. linear regression


def _log_evidence(x: np.ndarray, r: np.ndarray, sigma: float, delta: float) -> float:
    """Exact log N(r | 0, sigma² I + X X^T / delta), r = y − X mu0."""
    cov = sigma ** 2 * np.eye(len(r)) + x @ x.T / delta
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (r @ np.linalg.solve(cov, r) + logdet + len(r) * math.log(2 * math.pi)))


def test_linear_regression_learns_the_evidence_maximiser():
    torch.manual_seed(0)
    n, d, sigma = 40, 3, 0.5
    x = torch.randn(n, d)
    mu0 = torch.tensor([[0.5, -0.5, 0.2]])
    y = x @ torch.tensor([[1.0, 0.3, -0.8]]).T + sigma * torch.randn(n, 1)
    # closed form: maximise the exact log evidence over a fine grid of log delta
    xn, rn = x.double().numpy(), (y - x @ mu0.T).double().numpy().ravel()
    grid = np.exp(np.linspace(math.log(1e-3), math.log(1e3), 6001))
    evidence = [_log_evidence(xn, rn, sigma, g) for g in grid]
    best = grid[int(np.argmax(evidence))]

    model = nn.Linear(d, 1, bias=False)
    net = Network(model, head="none", stage_of={}, mu0={"weight": mu0.clone()})
    groups = PriorGroups(net, "two", init=1.0)
    estimator = LaplaceEstimator("kron", "ggn", fit_batch_size=n, likelihood="regression",
                                 sigma_noise=sigma)
    run = marglik_fit(net, (x, y), estimator, groups, lr=0.1, steps=300, batch_size=n, seed=0,
                      schedule=RoundSchedule("online", burnin_epochs=10, every_epochs=5),
                      hyper_steps=20, hyper_lr=0.1,
                      likelihood="regression", sigma_noise=sigma)
    learned = run.precisions["backbone"]
    assert groups.names == ["backbone"]
    assert abs(math.log(learned) - math.log(best)) < 0.05, (learned, best)
    # at the fixed point the Laplace evidence is the exact one
    exact = _log_evidence(xn, rn, sigma, learned)
    assert run.best_log_marglik == pytest.approx(exact, rel=1e-3, abs=1e-2)


# ------------------------------------------------ 2. the same marginal likelihood as laplace-torch


def _bn_net() -> Network:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    net = Network(model, head="4", stage_of={})
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        model(torch.randn(16, 1, 6, 6) * 2 + 1)
    return _offset_backbone(net)


def _plain_net() -> Network:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 5), nn.Tanh(), nn.Linear(5, 4))
    return _offset_backbone(Network(model, head="5", stage_of={}))


def _by_hand_prior(net: Network, delta_bb: float, delta_head: float, per_tensor: bool):
    """Prior precision and mean written out independently of PriorGroups."""
    precs, means = [], []
    for name, p in net.model.named_parameters():
        head = net.is_head(name)
        value = delta_head if head else delta_bb
        precs.append(torch.tensor([value]) if per_tensor else torch.full((p.numel(),), value))
        means.append(torch.zeros(p.numel()) if head else net.mu0[name].flatten())
    return torch.cat(precs), torch.cat(means)


@pytest.mark.parametrize("make, hessian, curvature", [
    (_bn_net, "diag", "ef"), (_bn_net, "diag", "ggn"), (_plain_net, "kron", "ggn"),
    (_plain_net, "kron", "ef"),
])
def test_log_marglik_equals_laplace_torch(make, hessian, curvature):
    from laplace import Laplace
    from laplace.curvature import CurvlinopsEF, CurvlinopsGGN

    net = make()
    torch.manual_seed(3)
    x, y = torch.randn(24, 1, 6, 6), torch.randint(0, 4, (24,))
    groups = PriorGroups(net, "two")
    _set_precisions(groups, [3.0, 0.5])
    ours = laplace_log_marglik(net, groups, (x, y), hessian, curvature)
    assert net.model.training  # train mode restored after the eval-mode fit
    assert all(p.requires_grad for p in net.model.parameters())

    prec, mean = _by_hand_prior(net, 3.0, 0.5, per_tensor=hessian == "kron")
    assert mean.abs().sum() > 0
    la = Laplace(net.model, "classification", subset_of_weights="all", hessian_structure=hessian,
                 prior_precision=prec, prior_mean=mean,
                 backend={"ef": CurvlinopsEF, "ggn": CurvlinopsGGN}[curvature])
    la.fit(DataLoader(TensorDataset(x, y), batch_size=8))
    theirs = float(la.log_marginal_likelihood())
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-3)
    # a prior centred at 0 gives a different number: the prior mean is really used
    la.prior_mean = torch.zeros_like(mean)
    assert abs(float(la.log_marginal_likelihood()) - ours) > 1e-2


def test_kron_gives_batchnorm_a_diagonal_block():
    net = _bn_net()
    groups = PriorGroups(net, "layerwise")
    blocks = LaplaceEstimator("kron", "ggn").blocks(groups)
    assert blocks == [(["0.weight", "0.bias", "4.weight", "4.bias"], "kron"),
                      (["1.weight", "1.bias"], "diag")]
    torch.manual_seed(3)
    x, y = torch.randn(24, 1, 6, 6), torch.randint(0, 4, (24,))
    value = laplace_log_marglik(net, groups, (x, y), "kron", "ggn")
    assert math.isfinite(value) and net.model.training


# ------------------------------------------------------------------ 3. the NTK bound


def _value(t: torch.Tensor) -> float:
    return float(t.detach())


def _tiny_classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
    net = _offset_backbone(Network(model, head="2", stage_of={}))
    x, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    groups = PriorGroups(net, "two")
    _set_precisions(groups, [1.6, 0.7])
    return net, groups, x, y


def test_ntk_bound_at_full_data_is_the_linearised_laplace_evidence():
    from laplace import Laplace
    from laplace.curvature import CurvlinopsGGN

    net, groups, x, y = _tiny_classifier()
    n = len(y)
    full = _value(ntk_bound(subset_terms(net, groups, x, y, "full"), groups, groups.delta(), n))
    prec, mean = _by_hand_prior(net, 1.6, 0.7, per_tensor=False)
    la = Laplace(net.model, "classification", subset_of_weights="all", hessian_structure="full",
                 prior_precision=prec, prior_mean=mean, backend=CurvlinopsGGN)
    la.fit(DataLoader(TensorDataset(x, y), batch_size=n))
    assert full == pytest.approx(float(la.log_marginal_likelihood()), rel=1e-5)
    # tensor-by-tensor Jacobian chunks give the same kernel as one chunk
    chunked = subset_terms(net, groups, x, y, "full", max_jacobian_mb=1e-6)
    assert _value(ntk_bound(chunked, groups, groups.delta(), n)) == pytest.approx(full, rel=1e-9)

    # expectation over all subsets of M = 4 (exact, no sampling) lies below the evidence
    values = [_value(ntk_bound(subset_terms(net, groups, x[list(s)], y[list(s)], "full"),
                              groups, groups.delta(), n))
              for s in itertools.combinations(range(n), 4)]
    assert statistics.fmean(values) < full - 1e-2
    assert max(values) > statistics.fmean(values)  # single subsets vary


def test_single_output_is_unbiased_for_independent_outputs():
    net, groups, x, y = _tiny_classifier()
    indep = _value(ntk_bound(subset_terms(net, groups, x, y, "independent"), groups,
                            groups.delta(), 20))
    singles = [_value(ntk_bound(subset_terms(net, groups, x, y, "single", output=c), groups,
                               groups.delta(), 20)) for c in range(3)]
    assert statistics.fmean(singles) == pytest.approx(indep, rel=1e-9)


def test_per_class_subsets():
    y = torch.tensor([0] * 10 + [1] * 10 + [2] * 4)
    idx = draw_subset(y, 9, "per-class", torch.Generator().manual_seed(0))
    assert len(idx) == len(set(idx.tolist())) == 9
    assert torch.bincount(y[idx], minlength=3).tolist() == [3, 3, 3]
    idx = draw_subset(y, 15, "per-class", torch.Generator().manual_seed(0))  # class 2: 4
    counts = torch.bincount(y[idx], minlength=3).tolist()
    assert len(set(idx.tolist())) == 15 and counts[2] == 4 and min(counts[:2]) >= 5


def test_grouped_subsets_fill_from_as_few_classes_as_they_can():
    """The authors' GroupedSubsetTensorDataLoader: classes in random order, each taken
    whole (shuffled) until M points: all but the last class touched are taken whole."""
    y = torch.tensor([0] * 10 + [1] * 10 + [2] * 4)
    seen = set()
    for seed in range(20):
        idx = draw_subset(y, 12, "grouped", torch.Generator().manual_seed(seed))
        assert len(idx) == len(set(idx.tolist())) == 12
        counts = torch.bincount(y[idx], minlength=3)
        whole = torch.bincount(y, minlength=3)
        touched = (counts > 0).nonzero().flatten().tolist()
        assert len(touched) <= 3 and sum(bool(counts[c] == whole[c]) for c in touched) \
            >= len(touched) - 1
        seen.add(tuple(counts.tolist()))
    assert len(seen) > 1  # the class order is random
    uniform = draw_subset(y, 12, "uniform", torch.Generator().manual_seed(0))
    assert len(set(uniform.tolist())) == 12


def test_ntk_prior_precision_follows_the_schedule_unless_set():
    assert NTKMarglik().initial_prior_precision() == 1.0  # late: online Laplace's
    assert NTKMarglik(schedule="online").initial_prior_precision() == 25.0  # the authors'
    assert NTKMarglik(prior_prec_init=25.0).initial_prior_precision() == 25.0
    assert NTKMarglik(schedule="online", prior_prec_init=3.0).initial_prior_precision() == 3.0
    from methods import LaplaceMarglik
    assert LaplaceMarglik().initial_prior_precision() == 1.0
    with pytest.raises(BenchError, match="subsets must be one of"):
        NTKMarglik(subsets="balanced").check_options()


# ----------------------------------------------------------------- 4. plugin contract


def test_check_method_laplace():
    summary = check_method(LaplaceMarglik, {"lrs": (0.1, 0.01), "hyper_steps": 5})
    assert summary["ok"] >= 1


def test_check_method_ntk():
    summary = check_method(NTKMarglik, {"lrs": (0.1, 0.01), "subset_size": 8, "hyper_steps": 2,
                                        "kernel": "full"})
    assert summary["ok"] >= 1


def test_sweep_then_finished():
    from bench.contract.method import FINISHED, Context
    from bench.driver.budget import Budget

    method = LaplaceMarglik(lrs=(0.1, 1e-3))
    method.start(Context.of(TINY_TASK, 0, Budget()))
    assert [method.suggest("a"), method.suggest("b"), method.suggest("c")] == \
        [{"lr": 0.1}, {"lr": 1e-3}, FINISHED]


# ---------------------------------------------------------------------- 5. records


def _bn_fit_data() -> FitData:
    torch.manual_seed(5)
    x = torch.randn(60, 1, 6, 6)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return FitData(TINY_TASK, 0, (x, y), None, 4, _bn_net)


@pytest.mark.parametrize("cls, options", [
    (LaplaceMarglik, {"hyper_steps": 10}),
    (LaplaceMarglik, {"hyper_steps": 10, "groups": "layerwise", "hessian": "kron",
                      "curvature": "ggn"}),
    (NTKMarglik, {"hyper_steps": 3, "subset_size": 10, "kernel": "full"}),
])
def test_records_precisions_and_history(cls, options):
    data = _bn_fit_data()
    reports = []
    fitted = cls(**options).fit(data, {"lr": 0.05},
                                lambda step, m: reports.append((step, dict(m))) and False)
    info = json.loads(json.dumps(fitted.info, default=float))
    net = data.make_network()
    names = ["backbone", "head"] if options.get("groups", "two") == "two" else \
        [n for n, _ in net.model.named_parameters()]
    assert list(info["precisions"]) == names
    assert all(v > 0 and math.isfinite(v) for v in info["precisions"].values())
    # TINY_TASK: 6 steps of 16 on 60 examples: epochs end at steps 4 and 6; burn-in 1 and
    # every 2 epochs: one round at the last step only
    assert info["hyper_rounds_at_step"] == [6]
    assert len(info["log_marglik"]) == len(info["log_marglik_steps"]) == 1
    assert len(info["log_marglik_steps"][0]) == options["hyper_steps"]
    assert fitted.objective == pytest.approx(-max(info["log_marglik"]) / 60)
    assert info["hyper_s"] > 0 and info["train_s"] > 0
    assert fitted.train_s == pytest.approx(info["hyper_s"] + info["train_s"])
    assert fitted.steps_done == 6 and info["lr"] == 0.05
    assert [s for s, _ in reports] == [4, 6]
    assert "log_marglik" not in reports[0][1] and reports[1][1]["log_marglik"] == \
        pytest.approx(info["log_marglik"][0])
    assert fitted.network.model.training


def test_keeps_the_parameters_of_the_best_round():
    data = _bn_fit_data()
    method = LaplaceMarglik(schedule="online", every_epochs=1, burnin_epochs=0, hyper_steps=10,
                            keep="best")
    fitted = method.fit(data, {"lr": 0.2}, lambda step, m: False)
    info = fitted.info
    assert len(info["log_marglik"]) == 2  # steps 4 and 6
    # the returned network (with its BatchNorm statistics) gives the best round's value
    groups = PriorGroups(fitted.network, "two")
    _set_precisions(groups, [info["precisions"]["backbone"], info["precisions"]["head"]])
    again = laplace_log_marglik(fitted.network, groups, data.train)
    assert again == pytest.approx(max(info["log_marglik"]), rel=1e-4)


class _ScriptedEstimator:
    """Rounds with given values; records the network state and precisions of each."""

    def __init__(self, values):
        self.values, self.states, self.precisions = list(values), [], []

    def round(self, net, groups, train, optimizer, steps, generator):
        with torch.no_grad():
            groups.log_delta.add_(1.0)
        self.states.append({k: v.clone() for k, v in net.model.state_dict().items()})
        self.precisions.append(groups.precisions())
        value = self.values.pop(0)
        return RoundRecord([value] * steps, value)


def test_best_round_state_and_precisions_are_restored():
    data = _bn_fit_data()
    net = data.make_network()
    groups = PriorGroups(net, "two")
    estimator = _ScriptedEstimator([-1.0, -5.0])  # the first of two rounds is the best
    run = marglik_fit(net, data.train, estimator, groups, lr=0.2, steps=6, batch_size=16, seed=0,
                      schedule=ONLINE_EVERY_EPOCH, hyper_steps=1, hyper_lr=0.1, keep="best")
    assert run.best_round == 0 and run.log_marglik == [-1.0, -5.0]
    first, last = estimator.states
    state = net.model.state_dict()
    assert not torch.equal(first["1.running_mean"], last["1.running_mean"])
    for key, value in first.items():  # parameters and BatchNorm buffers
        assert torch.equal(state[key], value), key
    assert run.precisions == estimator.precisions[0] == groups.precisions()


def test_stops_when_report_says_so():
    data = _bn_fit_data()
    fitted = LaplaceMarglik(hyper_steps=2).fit(data, {"lr": 0.05}, lambda step, m: True)
    assert fitted.steps_done == 4 and fitted.objective is None


# ------------------------------------------------- 6. which network a run returns, when rounds happen


def test_keep_final_returns_the_final_network_and_best_the_best_rounds():
    data = _bn_fit_data()
    states = {}
    for keep in ("final", "best"):
        net = data.make_network()
        groups = PriorGroups(net, "two")
        estimator = _ScriptedEstimator([-1.0, -5.0])  # the first of two rounds is the best
        run = marglik_fit(net, data.train, estimator, groups, lr=0.2, steps=6, batch_size=16,
                          seed=0, schedule=ONLINE_EVERY_EPOCH, hyper_steps=1, keep=keep)
        states[keep] = (net.model.state_dict(), estimator, run)
    final_state, final_est, final_run = states["final"]
    best_state, best_est, best_run = states["best"]
    first, last = final_est.states  # the same training both times (same seed)
    assert not torch.equal(first["0.weight"], last["0.weight"])
    for key in first:  # rounds happen after the step: the last round sees the final network
        assert torch.equal(final_state[key], last[key]), key
        assert torch.equal(best_state[key], first[key]), key
    assert final_run.returned_log_marglik == -5.0 and best_run.returned_log_marglik == -1.0
    assert final_run.precisions == final_est.precisions[-1]
    assert best_run.precisions == best_est.precisions[0]


def test_keep_is_recorded_and_picks_the_objective():
    data = _bn_fit_data()
    for keep in ("final", "best"):
        fitted = LaplaceMarglik(schedule="online", burnin_epochs=0, every_epochs=1,
                                hyper_steps=5, keep=keep).fit(data, {"lr": 0.2},
                                                              lambda s, m: False)
        info = fitted.info
        assert info["keep"] == keep and len(info["log_marglik"]) == 2
        chosen = info["final_log_marglik"] if keep == "final" else info["best_log_marglik"]
        assert fitted.objective == pytest.approx(-chosen / 60)
        assert info["best_log_marglik"] == max(info["log_marglik"])
        assert info["final_log_marglik"] == info["log_marglik"][-1]


@pytest.mark.parametrize("burnin, rounds, total, expected", [
    (0.8, 3, 75, [60, 68, 75]),  # the default: the first round at 80% of the run
    (0.5, 2, 10, [5, 10]),
    (0.0, 1, 10, [10]),  # one round, after the last step
    (0.9, 5, 4, [4]),  # more rounds than epochs left: one per epoch, deduplicated
])
def test_late_schedule_starts_where_asked(burnin, rounds, total, expected):
    assert RoundSchedule("late", burnin=burnin, rounds=rounds).epochs(total) == expected


def test_online_schedule_is_the_authors():
    assert RoundSchedule("online", burnin_epochs=2, every_epochs=3).epochs(10) == [3, 6, 9, 10]


def test_a_late_run_has_its_first_round_at_the_burnin_fraction():
    data = _bn_fit_data()  # 60 examples at batch 16: 4 steps an epoch
    net = data.make_network()
    estimator = _ScriptedEstimator([-3.0, -2.0, -1.0])
    run = marglik_fit(net, data.train, estimator, PriorGroups(net, "two"), lr=0.1, steps=40,
                      batch_size=16, seed=0, schedule=RoundSchedule("late", 0.5, 3),
                      hyper_steps=1)
    assert [h["step"] for h in run.history] == [20, 32, 40]  # epochs 5, 8 (7.5 -> 8), 10


@pytest.mark.parametrize("bad", [{"keep": "middle"}, {"schedule": "often"}, {"burnin": 1.0},
                                 {"burnin": -0.1}, {"rounds": 0}])
def test_bad_schedule_options_are_refused(bad):
    from bench.contract.errors import BenchError
    from bench.contract.method import Context
    from bench.driver.budget import Budget

    with pytest.raises(BenchError):
        LaplaceMarglik(**bad).start(Context.of(TINY_TASK, 0, Budget()))
