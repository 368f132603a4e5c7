"""``laplace-marglik``: online Laplace marginal-likelihood learning of L2-SP prior precisions
(Immer et al. 2021, in the L2-SP form of the DE-ELBo study; docs/methods.md#online-laplace).

MAP training with the prior theta_g ~ N(mu0_g, 1/delta_g) (backbone around its pretrained
values mu0, head around 0), loss = mean NLL + (1/(2N))·sum_g delta_g·||theta_g − mu0_g||²,
precisions in two groups (backbone, head) or one per parameter tensor ("layerwise"). At
each round of the schedule (``methods._marglik.RoundSchedule``: by default ``rounds`` = 3
rounds from 80% of the run to its end; ``schedule = "online"``: every ``every_epochs``
epochs after ``burnin_epochs``, and after the last step), laplace-torch's ``Laplace`` is
fitted on all N training examples with ``prior_mean`` = [mu0, 0] and the precisions
expanded per tensor (Kronecker) or per element (diagonal, full), and ``hyper_steps`` Adam
steps on log delta maximise its ``log_marginal_likelihood``. The run returns its final
network (``keep = "final"``, the DE-ELBo study's rule) or the best round's (``keep =
"best"``, laplace-torch's ``marglik_training``); its objective is −(log marginal
likelihood of the returned network)/N, and the learning-rate sweep is chosen on it.
laplace-torch computes the curvature and the marginal likelihood; this module only writes
the loop its ``marglik_training`` cannot do (a prior mean mu0, grouped precisions).

BatchNorm. Training uses batch statistics (train mode) as the shared loop does. Every
Laplace fit runs the network in eval mode, so BatchNorm is a fixed per-channel affine map
given its running statistics and every example's likelihood depends on the parameters
alone (per-example gradients and Jacobians are well defined); train mode is restored
after the fit, and a kept "best" state includes the running statistics. The BatchNorm
affine parameters are backbone parameters: they carry the prior (centred at their
pretrained values) and are learned like the others. With ``hessian="diag"`` or
``"full"`` they are in the Laplace approximation with everything else. laplace-torch's
Kronecker backends do not cover them (curvlinops' KFAC supports only Linear and Conv2d
and raises NotImplementedError on anything else), so with ``hessian="kron"`` the
posterior precision is block-diagonal: Kronecker factors for the parameters of plain
``nn.Linear`` and ``nn.Conv2d`` (groups=1) modules, and a diagonal block of the same
curvature type (EF or GGN) for every other parameter — BatchNorm weights and biases,
grouped/depthwise convolutions, and Conv2d subclasses that pad inside ``forward`` (such
as EfficientNet's same-padding convolutions, whose unpadded inputs KFAC would misread).
The log marginal likelihood is then laplace-torch's for each block, summed, with the
(shared) log likelihood counted once.

Defaults (scaled for CPU where marked): diagonal EF curvature (``CurvlinopsEF``, the
DE-ELBo study's choice; the only one measured practical on EfficientNet-Lite0: GGN
takes minutes per fit there, and with ``hessian="kron"`` only its final linear layer gets
Kronecker factors, every convolution being depthwise or a same-padding subclass),
``hyper_steps`` K = 100 and ``hyper_lr`` = 1.0 (the DE-ELBo study's settings),
``prior_prec_init`` = 1.0 (laplace-torch's ``marglik_training``), ``keep = "final"``,
``schedule = "late"`` with ``burnin`` = 0.8 and ``rounds`` = 3 (the online schedule's
defaults ``burnin_epochs`` B = 1 and ``every_epochs`` F = 2 are scaled for CPU; authors
F = 1: rounds from epoch 1 feed unconverged curvature back into short runs, see
``methods._marglik``). Cost measured here (one thread, N = 100): on EfficientNet-Lite0 at
32 px a round is about 8 s (diag-EF fit 3-4 s, 100 marginal-likelihood steps about 5 s),
as long as the 30 training steps of the quick suite; on small-cnn at 16 px about 0.7 s.
``hessian="kron"`` suits plain conv/linear networks such as small-cnn (fit about 2.4 s
there, dominated by the 3137x3137 factor of its first linear layer).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.contract.options import require_int
from bench.zoo.data import Split
from bench.zoo.network import Network
from methods._marglik import MarglikMethod, PriorGroups, RoundRecord, check_choice

HESSIANS = ("diag", "kron", "full")
CURVATURES = ("ef", "ggn")
DEFAULT_LRS = (0.1, 0.01, 1e-3, 1e-4)


def _backend(curvature: str):
    from laplace.curvature import CurvlinopsEF, CurvlinopsGGN

    return {"ef": CurvlinopsEF, "ggn": CurvlinopsGGN}[curvature]


def kron_parameter_names(model: nn.Module) -> set[str]:
    """Parameters that get Kronecker factors: those of plain Linear and Conv2d (groups=1)
    modules. Every other parameter (BatchNorm, ...) goes to a diagonal block."""
    names = set()
    for mod_name, mod in model.named_modules():
        plain = type(mod) is nn.Linear or (type(mod) is nn.Conv2d and mod.groups == 1)
        if plain:
            for p_name, p in mod.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


class _Block:
    """One fitted laplace-torch approximation over a subset of the parameters."""

    def __init__(self, la, names: list[str], per_tensor: bool) -> None:
        self.la, self.names, self.per_tensor = la, names, per_tensor

    def prior_precision(self, groups: PriorGroups, delta: torch.Tensor) -> torch.Tensor:
        if self.per_tensor:
            return groups.per_tensor(delta, self.names)
        return groups.per_element(delta, self.names)


class LaplaceEstimator:
    """Full-data Laplace rounds with laplace-torch (see the module docstring)."""

    def __init__(self, hessian: str = "diag", curvature: str = "ef", fit_batch_size: int = 32,
                 likelihood: str = "classification", sigma_noise: float = 1.0) -> None:
        check_choice("hessian", hessian, HESSIANS)
        check_choice("curvature", curvature, CURVATURES)
        require_int("fit_batch_size", fit_batch_size, 1)
        self.hessian, self.curvature = hessian, curvature
        self.fit_batch_size = fit_batch_size
        self.likelihood, self.sigma_noise = likelihood, sigma_noise

    def blocks(self, groups: PriorGroups) -> list[tuple[list[str], str]]:
        """(parameter names, hessian structure) of each block, in model order."""
        names = groups.param_names
        if self.hessian != "kron":
            return [(names, self.hessian)]
        kron = kron_parameter_names(groups.net.model)
        out = [([n for n in names if n in kron], "kron"),
               ([n for n in names if n not in kron], "diag")]
        return [(ns, h) for ns, h in out if ns]

    def fit(self, net: Network, groups: PriorGroups, train: Split) -> list[_Block]:
        """Fit laplace-torch on all of ``train`` at the current parameters (eval mode)."""
        from laplace import Laplace

        x, y = train
        loader = DataLoader(TensorDataset(x, y), batch_size=self.fit_batch_size)
        model = net.model
        params = dict(model.named_parameters())
        flags = {n: p.requires_grad for n, p in params.items()}
        delta = groups.delta().detach()
        fitted = []
        was_training = model.training
        # laplace-torch flattens parameters with view(-1): a channels_last network (task
        # channels_last) is fitted in the standard layout, then laid out again
        channels_last = any(p.dim() == 4 and not p.is_contiguous() for p in params.values())
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.eval()  # BatchNorm on running statistics: see the module docstring
        try:
            for names, hessian in self.blocks(groups):
                chosen = set(names)
                for n, p in params.items():  # laplace-torch covers what requires grad
                    p.requires_grad_(flags[n] and n in chosen)
                block = _Block(None, names, per_tensor=hessian == "kron")
                block.la = Laplace(model, self.likelihood, subset_of_weights="all",
                                   hessian_structure=hessian, sigma_noise=self.sigma_noise,
                                   prior_precision=block.prior_precision(groups, delta),
                                   prior_mean=groups.prior_mean(names),
                                   backend=_backend(self.curvature))
                block.la.fit(loader)
                fitted.append(block)
        finally:
            for n, p in params.items():
                p.requires_grad_(flags[n])
            model.train(was_training)
            if channels_last:
                model.to(memory_format=torch.channels_last)
        return fitted

    def log_marglik(self, blocks: list[_Block], groups: PriorGroups,
                    delta: torch.Tensor) -> torch.Tensor:
        """laplace-torch's log marginal likelihood at precisions ``delta`` (per group),
        summed over blocks with the log likelihood counted once."""
        total = 0.0
        for i, block in enumerate(blocks):
            total = total + block.la.log_marginal_likelihood(
                prior_precision=block.prior_precision(groups, delta))
            if i:
                total = total - block.la.log_likelihood
        return total

    def round(self, net, groups, train, optimizer, steps, generator):
        blocks = self.fit(net, groups, train)
        values = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            lml = self.log_marglik(blocks, groups, groups.delta())
            if not torch.isfinite(lml):
                values.append(float("nan"))
                break
            (-lml).backward()
            optimizer.step()
            values.append(float(lml.detach()))
        with torch.no_grad():
            value = float(self.log_marglik(blocks, groups, groups.delta()))
            # laplace-torch keeps the last prior precision: its terms are at the final delta
            terms = {"log_lik": float(blocks[0].la.log_likelihood),
                     "log_det_ratio": sum(float(b.la.log_det_ratio) for b in blocks),
                     "scatter": sum(float(b.la.scatter) for b in blocks)}
        return RoundRecord(values, value, terms)


def laplace_log_marglik(net: Network, groups: PriorGroups, train: Split, hessian: str = "diag",
                        curvature: str = "ef", likelihood: str = "classification",
                        sigma_noise: float = 1.0, fit_batch_size: int = 32) -> float:
    """The log marginal likelihood this method computes at the current parameters and
    precisions (one Laplace fit, no hyper-step)."""
    estimator = LaplaceEstimator(hessian, curvature, fit_batch_size, likelihood, sigma_noise)
    blocks = estimator.fit(net, groups, train)
    with torch.no_grad():
        return float(estimator.log_marglik(blocks, groups, groups.delta()))


class LaplaceMarglik(MarglikMethod):
    """Online Laplace marginal likelihood (laplace-torch) for the L2-SP prior precisions;
    a learning-rate sweep chosen by −(log marginal likelihood)/N of the returned network.

    Options: ``lrs`` (the sweep, run in order), ``groups`` ("two": backbone/head,
    "layerwise": one precision per parameter tensor), ``hessian`` ("diag", "kron",
    "full"), ``curvature`` ("ef": CurvlinopsEF, "ggn": CurvlinopsGGN), ``keep``
    ("final": the network at the end, the study's rule; "best": the best round's,
    laplace-torch's ``marglik_training``), ``schedule`` ("late": ``rounds`` rounds from
    ``burnin`` (fraction of the run) to the end; "online": every ``every_epochs`` epochs
    after ``burnin_epochs``, the authors' schedule), ``hyper_steps`` (K Adam steps per
    round), ``hyper_lr``, ``prior_prec_init`` (every group's initial delta),
    ``fit_batch_size`` (batch of the Laplace fit; memory only),
    ``allow_regularizer_mismatch`` (see ``methods._sweep``)."""

    name: ClassVar[str] = "laplace-marglik"

    def __init__(self, lrs: tuple[float, ...] = DEFAULT_LRS, groups: str = "two",
                 hessian: str = "diag", curvature: str = "ef", keep: str = "final",
                 schedule: str = "late", burnin: float = 0.8, rounds: int = 3,
                 burnin_epochs: int = 1, every_epochs: int = 2, hyper_steps: int = 100,
                 hyper_lr: float = 1.0, prior_prec_init: float = 1.0, fit_batch_size: int = 32,
                 allow_regularizer_mismatch: bool = False) -> None:
        self.lrs = lrs
        self.groups = groups
        self.hessian = hessian
        self.curvature = curvature
        self.keep = keep
        self.schedule = schedule
        self.burnin = burnin
        self.rounds = rounds
        self.burnin_epochs = burnin_epochs
        self.every_epochs = every_epochs
        self.hyper_steps = hyper_steps
        self.hyper_lr = hyper_lr
        self.prior_prec_init = prior_prec_init
        self.fit_batch_size = fit_batch_size
        self.allow_regularizer_mismatch = allow_regularizer_mismatch

    def make_estimator(self) -> LaplaceEstimator:
        return LaplaceEstimator(self.hessian, self.curvature, self.fit_batch_size)

    def prepare(self) -> None:
        import laplace  # noqa: F401 - seconds on a fresh worker; kept out of hyper_s


__all__ = ["LaplaceMarglik", "LaplaceEstimator", "laplace_log_marglik", "kron_parameter_names"]
