"""``ntk-marglik``: the stochastic NTK lower bound on the linearised-Laplace marginal
likelihood (Immer et al. 2023; docs/methods.md#stochastic-ntk-bound), used to learn L2-SP prior
precisions.

The same loop as ``laplace-marglik`` (MAP training with the prior theta_g ~ N(mu0_g,
1/delta_g), precisions in groups, rounds on the same schedule, the final or the best
round's network returned by ``keep``), but each
of a round's ``hyper_steps`` Adam steps draws a fresh random subset S of M =
``subset_size`` training points (``subsets``: uniform, per class, or grouped) and maximises

    (N/M)·sum_{n in S} log p(y_n | f_n) − ½·sum_g delta_g·||theta_g − mu0_g||²
        − ½·(N/M)·log det(I + L^T K L),      K = J·diag(1/delta)·J^T

the function-space (kernel) form of the linearised (GGN) Laplace on S, scaled by N/M: J is
the Jacobian of the logits on S, L L^T the Hessian of the loss in function space (per
example, softmax: diag(p) − p p^T = L_n L_n^T with L_n = diag(sqrt p) − p sqrt(p)^T). Its
expectation over subsets is a lower bound on the full-data linearised-Laplace log marginal
likelihood (equal at M = N), and its cost is independent of N. Kernels (``kernel``):
``"full"``: one MC×MC matrix; ``"independent"``: outputs treated as independent, C
separate M×M blocks with the diagonal of the loss Hessian; ``"single"``: one randomly
drawn output's M×M block, its log-determinant times C (an unbiased estimate of the
independent-output one, at 1/C of the Jacobian cost).

Jacobians come from torch.func (``vmap`` over examples of ``jacrev``), tensor chunk by
tensor chunk: parameter tensors are grouped so that one chunk's Jacobian (rows × its
parameters × 4 bytes) stays under ``max_jacobian_mb`` (a single larger tensor is done
alone), and K = sum over tensors of J_l J_l^T is accumulated per prior group (so K(delta)
= sum_g K_g / delta_g is differentiable in delta); the whole Jacobian is never held.

BatchNorm: as in ``laplace-marglik``, the kernel and the likelihood terms are computed
with the network in eval mode (running statistics: a fixed affine map, so each example's
logits depend on the parameters alone and per-example Jacobians are defined); BatchNorm
affine parameters are backbone parameters with their own Jacobian columns like any other
tensor. Train mode is restored after each round.

A round's value (used to pick the best round and, as −value/N, as the run's
objective) is the mean of its hyper-steps' bound estimates.

Defaults (scaled for CPU where marked): ``subset_size`` M = 32 (authors: 500; scaled for
CPU), ``kernel="single"`` (scaled for CPU: measured here on one thread at M = 32, one
hyper-step takes 0.85 s single / 14 s independent / 18 s full on EfficientNet-Lite0 at
32 px, and 0.07 / 0.47 / 1.0 s on small-cnn at 16 px; the full kernel's cost is dominated
by the (MC)²·P kernel product), ``subsets="uniform"`` (for which the expectation bound
holds exactly; the authors' ``grouped`` loader fills a subset from as few classes as it
can), ``hyper_steps`` K = 10 per round (scaled for CPU: every step computes fresh
Jacobians), ``hyper_lr`` = 0.1 (laplace-torch's ``marglik_training`` default),
``keep``/``schedule`` as for ``laplace-marglik`` (late rounds and the final network by
default; the online schedule's B = 1, F = 2 are scaled for CPU; authors: B = 10, F = 5 over
long runs), and ``prior_prec_init`` following the schedule unless set: the authors' 25 with
their online schedule, whose first round comes after a burn-in, and 1 (online Laplace's)
with the late one, where 25 would hold the weights near mu0 for 80% of the run
(results/ntk-prior: 0.7-4.0 points lost on every seed of the reference tasks).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import functional_call, jacrev, vmap

from bench.contract.errors import BenchError
from bench.contract.options import require_int, require_positive
from bench.zoo.data import Split
from bench.zoo.network import Network
from methods._marglik import MarglikMethod, PriorGroups, RoundRecord, check_choice

KERNELS = ("full", "independent", "single")
DEFAULT_LRS = (0.1, 0.01, 1e-3, 1e-4)


SUBSETS = ("uniform", "per-class", "grouped")


def draw_subset(y: torch.Tensor, m: int, kind: str,
                generator: torch.Generator) -> torch.Tensor:
    """Indices of M distinct training points. ``uniform``: drawn uniformly (the bound holds
    in expectation exactly); ``per-class``: M//C of each class (all of a class if it has
    fewer), topped up uniformly from the rest (this harness's); ``grouped``: the authors'
    ``GroupedSubsetTensorDataLoader`` (data_utils/utils.py), which fills the subset from as
    few classes as it can: classes in random order, each class's points shuffled, taken
    until M. Drawn on the CPU with the CPU ``generator`` (the same subsets on every
    device); the indices are CPU tensors."""
    y = y.cpu()
    n = len(y)
    m = min(m, n)
    if kind == "uniform":
        return torch.randperm(n, generator=generator)[:m]
    classes = torch.unique(y)
    if kind == "grouped":
        chosen, remaining = [], m
        for c in classes[torch.randperm(len(classes), generator=generator)]:
            if remaining == 0:
                break
            idx = (y == c).nonzero().flatten()
            chosen.append(idx[torch.randperm(len(idx), generator=generator)][:remaining])
            remaining -= len(chosen[-1])
        return torch.cat(chosen)
    per = m // len(classes)
    chosen = []
    for c in classes:
        idx = (y == c).nonzero().flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per]])
    chosen = torch.cat(chosen)
    rest = m - len(chosen)
    if rest > 0:
        free = torch.ones(n, dtype=torch.bool)
        free[chosen] = False
        pool = free.nonzero().flatten()
        chosen = torch.cat([chosen, pool[torch.randperm(len(pool), generator=generator)[:rest]]])
    return chosen


def _chunks(names: list[str], sizes: list[int], rows: int, max_bytes: float) -> list[list[str]]:
    """Consecutive parameter tensors grouped so each chunk's Jacobian fits ``max_bytes``."""
    chunks: list[list[str]] = []
    current, used = [], 0
    for name, size in zip(names, sizes):
        cost = rows * size * 4
        if current and used + cost > max_bytes:
            chunks.append(current)
            current, used = [], 0
        current.append(name)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def group_kernels(net: Network, groups: PriorGroups, x: torch.Tensor, kernel: str,
                  output: int | None = None, max_jacobian_mb: float = 256.0) -> torch.Tensor:
    """Per-group kernels K_g = J_g J_g^T of the logits on ``x`` (float64), accumulated
    chunk by chunk of parameter tensors. ``kernel="full"``: (G, M·C, M·C), rows ordered
    (example, output); ``"independent"``: (G, C, M, M); ``"single"``: (G, 1, M, M) for
    logit ``output``. Call with the model in eval mode."""
    check_choice("kernel", kernel, KERNELS)
    model = net.model
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    m = len(x)
    with torch.no_grad():
        c = functional_call(model, (params, buffers), (x[:1],)).shape[-1]
    single = kernel == "single"
    if single and output is None:
        raise BenchError("kernel='single' needs the output index")
    per = 1 if single else c
    n_groups = len(groups.names)
    shape = (n_groups, m * c, m * c) if kernel == "full" else (n_groups, per, m, m)
    kernels = torch.zeros(shape, dtype=torch.float64, device=x.device)

    def logits(chunk: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**params, **chunk}, buffers), (xi.unsqueeze(0),))[0]
        return out[output:output + 1] if single else out

    jacobian = vmap(jacrev(logits), in_dims=(None, 0))
    group_of = dict(zip(groups.param_names, groups.group_of))
    for chunk in _chunks(groups.param_names, groups.sizes, m * per, max_jacobian_mb * 2 ** 20):
        jac = jacobian({n: params[n] for n in chunk}, x)  # name -> (M, per, *shape)
        for name in chunk:
            j = jac.pop(name).reshape(m, per, -1)
            if kernel == "full":
                flat = j.reshape(m * per, -1)
                kernels[group_of[name]] += (flat @ flat.T).double()
            else:
                kernels[group_of[name]] += torch.einsum("mcp,ncp->cmn", j, j).double()
            del j
        del jac
    return kernels


@dataclass
class SubsetTerms:
    """What the bound needs from one subset at fixed parameters."""

    log_lik: torch.Tensor  # sum over the subset of log p(y_n | f_n), float64
    kernels: torch.Tensor  # per-group kernels, see group_kernels
    factor: torch.Tensor  # full: (M, C, C) with Lambda_n = L_n L_n^T; else (per, M) sqrt(diag)
    kernel: str
    m: int
    outputs: int  # C


def subset_terms(net: Network, groups: PriorGroups, x: torch.Tensor, y: torch.Tensor,
                 kernel: str = "full", output: int | None = None,
                 likelihood: str = "classification", sigma_noise: float = 1.0,
                 max_jacobian_mb: float = 256.0) -> SubsetTerms:
    """Log likelihood, loss-Hessian factors and per-group kernels on a subset (eval mode)."""
    model = net.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            f = model(x).double()
        m, c = f.shape
        if likelihood == "classification":
            logp = torch.log_softmax(f, -1)
            log_lik = logp.gather(1, y.reshape(-1, 1)).sum()
            p = logp.exp()
            sp = p.sqrt()
            full = torch.diag_embed(sp) - p.unsqueeze(2) * sp.unsqueeze(1)
            diag = p * (1 - p)
        else:
            s2 = sigma_noise ** 2
            log_lik = (-(y.double() - f).pow(2) / (2 * s2) - 0.5 * math.log(2 * math.pi * s2)).sum()
            full = torch.eye(c, dtype=torch.float64, device=f.device).expand(m, c, c) \
                / sigma_noise
            diag = torch.full((m, c), 1 / s2, dtype=torch.float64, device=f.device)
        kernels = group_kernels(net, groups, x, kernel, output, max_jacobian_mb)
    finally:
        model.train(was_training)
    if kernel == "full":
        factor = full
    elif kernel == "independent":
        factor = diag.sqrt().T  # (C, M)
    else:
        factor = diag[:, output].sqrt().unsqueeze(0)  # (1, M)
    return SubsetTerms(log_lik, kernels, factor, kernel, m, c)


def ntk_bound(terms: SubsetTerms, groups: PriorGroups, delta: torch.Tensor,
              n_total: int) -> torch.Tensor:
    """The N/M-scaled kernel-form bound at precisions ``delta`` (differentiable)."""
    inv = (1 / delta).double()
    m, c = terms.m, terms.outputs
    if terms.kernel == "full":
        k = (terms.kernels * inv.view(-1, 1, 1)).sum(0).reshape(m, c, m, c)
        lam = terms.factor
        inner = torch.einsum("nca,ncke,keb->nakb", lam, k, lam).reshape(m * c, m * c)
        a = torch.eye(m * c, dtype=torch.float64, device=inner.device) + inner
        logdet = 2 * torch.linalg.cholesky(a).diagonal().log().sum()
    else:
        k = (terms.kernels * inv.view(-1, 1, 1, 1)).sum(0)  # (per, M, M)
        s = terms.factor
        a = torch.eye(m, dtype=torch.float64, device=k.device) \
            + s.unsqueeze(2) * k * s.unsqueeze(1)
        logdet = 2 * torch.linalg.cholesky(a).diagonal(dim1=-2, dim2=-1).log().sum()
        if terms.kernel == "single":
            logdet = logdet * c
    scale = n_total / m
    scatter = groups.scatter(delta).double()
    return scale * terms.log_lik - 0.5 * scatter - 0.5 * scale * logdet


def ntk_bound_terms(terms: SubsetTerms, groups: PriorGroups, delta: torch.Tensor,
                    n_total: int) -> dict[str, float]:
    """The bound's three parts (log likelihood and log-determinant scaled by N/M, scatter)."""
    with torch.no_grad():
        scale = n_total / terms.m
        scatter = float(groups.scatter(delta))
        bound = float(ntk_bound(terms, groups, delta, n_total))
        log_lik = scale * float(terms.log_lik)
        return {"log_lik": log_lik, "scatter": scatter,
                "log_det": 2 * (log_lik - 0.5 * scatter - bound)}


class NTKEstimator:
    """Stochastic NTK-bound rounds (see the module docstring)."""

    def __init__(self, subset_size: int = 32, kernel: str = "single", subsets: str = "uniform",
                 max_jacobian_mb: float = 256.0, likelihood: str = "classification",
                 sigma_noise: float = 1.0) -> None:
        check_choice("kernel", kernel, KERNELS)
        require_int("subset_size", subset_size, 1)
        check_choice("subsets", subsets, SUBSETS)
        require_positive("max_jacobian_mb", max_jacobian_mb)
        self.subset_size, self.kernel, self.subsets = subset_size, kernel, subsets
        self.max_jacobian_mb = max_jacobian_mb
        self.likelihood, self.sigma_noise = likelihood, sigma_noise

    def step_terms(self, net: Network, groups: PriorGroups, train: Split,
                   generator: torch.Generator) -> SubsetTerms:
        x, y = train
        kind = self.subsets if self.likelihood == "classification" else "uniform"
        idx = draw_subset(y, self.subset_size, kind, generator).to(x.device)
        output = None
        if self.kernel == "single":
            with torch.no_grad():
                was = net.model.training
                net.model.eval()
                c = net.model(x[idx[:1]]).shape[-1]
                net.model.train(was)
            output = int(torch.randint(c, (1,), generator=generator))
        return subset_terms(net, groups, x[idx], y[idx], self.kernel, output, self.likelihood,
                            self.sigma_noise, self.max_jacobian_mb)

    def round(self, net, groups, train, optimizer, steps, generator):
        n = len(train[0])
        values, parts = [], []
        for _ in range(steps):
            terms = self.step_terms(net, groups, train, generator)
            optimizer.zero_grad(set_to_none=True)
            bound = ntk_bound(terms, groups, groups.delta(), n)
            if not torch.isfinite(bound):
                values.append(float("nan"))
                break
            parts.append(ntk_bound_terms(terms, groups, groups.delta(), n))
            (-bound).backward()
            optimizer.step()
            values.append(float(bound.detach()))
        value = statistics.fmean(values) if values else float("nan")
        mean_terms = {k: statistics.fmean(p[k] for p in parts) for k in parts[0]} if parts \
            else {}
        return RoundRecord(values, value, mean_terms)


class NTKMarglik(MarglikMethod):
    """Stochastic NTK marginal-likelihood bound (subsets of M points, N/M-scaled) for the
    L2-SP prior precisions; a learning-rate sweep chosen by −(round's mean bound)/N of the
    returned network.

    Options: ``lrs``, ``groups``, ``keep``, ``schedule``, ``burnin``, ``rounds``,
    ``burnin_epochs``, ``every_epochs``, ``hyper_steps``, ``hyper_lr``,
    ``prior_prec_init``, ``allow_regularizer_mismatch`` as for ``laplace-marglik``;
    ``subset_size`` (M), ``kernel`` ("full", "independent", "single"), ``subsets``
    ("uniform", "per-class": M/C of each class, "grouped": the authors' loader),
    ``max_jacobian_mb`` (memory cap of one Jacobian chunk). ``prior_prec_init`` left out
    follows the schedule: 1 with "late", the authors' 25 with "online"."""

    name: ClassVar[str] = "ntk-marglik"
    PRIOR_PREC_INIT: ClassVar[dict[str, float]] = {"late": 1.0, "online": 25.0}

    def __init__(self, lrs: tuple[float, ...] = DEFAULT_LRS, groups: str = "two",
                 subset_size: int = 32, kernel: str = "single", subsets: str = "uniform",
                 keep: str = "final", schedule: str = "late", burnin: float = 0.8,
                 rounds: int = 3, burnin_epochs: int = 1, every_epochs: int = 2,
                 hyper_steps: int = 10, hyper_lr: float = 0.1,
                 prior_prec_init: float | None = None,
                 max_jacobian_mb: float = 256.0, allow_regularizer_mismatch: bool = False) -> None:
        self.lrs = lrs
        self.groups = groups
        self.subset_size = subset_size
        self.kernel = kernel
        self.subsets = subsets
        self.keep = keep
        self.schedule = schedule
        self.burnin = burnin
        self.rounds = rounds
        self.burnin_epochs = burnin_epochs
        self.every_epochs = every_epochs
        self.hyper_steps = hyper_steps
        self.hyper_lr = hyper_lr
        self.prior_prec_init = prior_prec_init
        self.max_jacobian_mb = max_jacobian_mb
        self.allow_regularizer_mismatch = allow_regularizer_mismatch

    def make_estimator(self) -> NTKEstimator:
        return NTKEstimator(self.subset_size, self.kernel, self.subsets, self.max_jacobian_mb)


# ------------------------------------------------------------------ benchmark


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ntk_scaling_benchmark(backbone: str = "small-cnn", dataset: str | None = None,
                          ns: tuple[int, ...] = (100, 1000), image_size: int | None = None,
                          subset_size: int = 32, kernel: str = "single",
                          laplace_hessian: str = "diag", laplace_curvature: str = "ef",
                          laplace_hyper_steps: int = 100, repeats: int = 3, seed: int = 0,
                          threads: int | None = 1, print_fn=print) -> list[dict]:
    """Time one NTK hyper-step (a subset of ``subset_size`` points: Jacobians, bound,
    Adam step) and one full-data Laplace hyper-step (laplace-torch fit on all N +
    ``laplace_hyper_steps`` marginal-likelihood Adam steps) as N grows; print a table with
    the time ratios against the smallest N (goal of the NTK bound: about 1x for 10x N).
    Times are medians over ``repeats`` (the Laplace fit: ``repeats`` too). Returns the rows."""
    from bench.zoo.task import Task
    from methods._laplace import LaplaceEstimator

    if threads:
        torch.set_num_threads(threads)
    dataset = dataset or ("mnist-5k" if backbone == "small-cnn" else "animal-mnist")
    if image_size is None:
        image_size = 16 if backbone == "small-cnn" else 32
    rows = []
    for n in ns:
        task = Task(dataset=dataset, n=n, backbone=backbone, image_size=image_size)
        data = task.load(seed)
        net = data.network()
        groups = PriorGroups(net, "two", 1.0)
        gen = torch.Generator().manual_seed(seed)
        ntk = NTKEstimator(subset_size, kernel)
        lap = LaplaceEstimator(laplace_hessian, laplace_curvature)

        def ntk_step():
            optimizer = torch.optim.Adam([groups.log_delta], lr=0.1)
            ntk.round(net, groups, data.train, optimizer, 1, gen)

        def laplace_step():
            optimizer = torch.optim.Adam([groups.log_delta], lr=1.0)
            lap.round(net, groups, data.train, optimizer, laplace_hyper_steps, gen)

        if not rows:  # warm-up (first torch.func call, laplace import)
            ntk_step()
            laplace_step()
        rows.append({"n": n, "ntk_s": _median_time(ntk_step, repeats),
                     "laplace_s": _median_time(laplace_step, repeats)})
    base = rows[0]
    print_fn(f"NTK vs full-data Laplace hyper-step time, {backbone} on {dataset} at "
             f"{image_size} px, threads={threads}; NTK: M={subset_size}, kernel={kernel}; "
             f"Laplace: {laplace_hessian} {laplace_curvature.upper()}, fit + "
             f"{laplace_hyper_steps} steps; medians of {repeats}")
    print_fn(f"{'N':>6} {'NTK step s':>11} {'ratio':>6} {'Laplace step s':>15} {'ratio':>6}")
    for row in rows:
        row["ntk_ratio"] = row["ntk_s"] / base["ntk_s"]
        row["laplace_ratio"] = row["laplace_s"] / base["laplace_s"]
        print_fn(f"{row['n']:>6} {row['ntk_s']:>11.3f} {row['ntk_ratio']:>6.2f} "
                 f"{row['laplace_s']:>15.3f} {row['laplace_ratio']:>6.2f}")
    return rows


__all__ = ["NTKMarglik", "NTKEstimator", "ntk_bound", "subset_terms", "group_kernels",
           "draw_subset", "ntk_scaling_benchmark"]
