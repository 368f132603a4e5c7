"""DE-ELBo's training side (worker only; ``methods._de_elbo`` holds the method and its
options): the variational hook on the shared loop, one run of the sweep, and the final
objective.

The network is never rewritten: each forward pass is ``torch.func.functional_call(model,
{name: m + sigma*eps}, x)`` over every parameter, so any backbone of the harness works;
buffers (BatchNorm running statistics) stay the module's own and update as usual.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call

from bench.contract.errors import BenchError
from bench.contract.method import FitData, Fitted, Report
from bench.training.train import Hook, Loop, TrainConfig, TrainingDiverged, fine_tune
from bench.worker.fit import epoch_metrics
from methods._sweep import centred_at_pretrained

if TYPE_CHECKING:
    from methods._de_elbo import DEELBo


def profiled_prior(sq_dist: torch.Tensor, dim: int, sigma2: torch.Tensor):
    """The optimal prior variance of one group and the KL with it plugged in.

    For ``q = N(m, sigma2 I)`` and prior ``N(mu, v I)`` over ``dim`` numbers, with
    ``sq_dist = ||m - mu||^2``: ``v* = sq_dist/dim + sigma2`` and
    ``KL(q || N(mu, v* I)) = (dim/2) log(v*/sigma2)``, computed as
    ``(dim/2) log1p(sq_dist / (dim sigma2))`` (no cancellation when m is near mu).
    Differentiable in both ``sq_dist`` and ``sigma2``; gradients flow through v* (as in
    the authors' ``L2KappaELBoLoss``; by the envelope theorem the total gradient equals
    the gradient at fixed v = v*).
    """
    var = sq_dist / dim + sigma2
    kl = 0.5 * dim * torch.log1p(sq_dist / (dim * sigma2))
    return var, kl


def sample_weights(names, means, sigma) -> dict[str, torch.Tensor]:
    """One posterior sample w = m + sigma*eps per parameter. eps is drawn in the tensor's
    logical order on its device (``randn_like`` would fill memory order, so a
    channels_last network would draw other numbers)."""
    return {name: p + sigma * torch.randn(p.shape, dtype=p.dtype, device=p.device)
            for name, p in zip(names, means)}


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for small and large y


class VariationalHook(Hook):
    """The loop's part of the (DE-)ELBo: the posterior scale rho as an extra trained
    tensor, a sampled forward pass w = m + sigma*eps, and the profiled KL term over
    kappa*N as the penalty. Records sigma, lambda, tau, the KL term and the epoch's mean
    objective at every epoch end (the loop itself records the epoch's mean NLL,
    ``train_nll``)."""

    def __init__(self, net, sigma_init: float, kappa: float, n: int, centred: bool) -> None:
        self.net = net
        self.bb = net.backbone_parameters()
        self.head = net.head_parameters()
        self.d_bb = sum(p.numel() for _, p in self.bb)
        self.d_head = sum(p.numel() for _, p in self.head)
        self.mu0 = [(net.mu0[name] if centred else torch.zeros_like(p)).detach().to(p.dtype)
                    for name, p in self.bb]
        self.names = [name for name, _ in self.bb + self.head]
        self.means = [p for _, p in self.bb + self.head]  # m is the model's own parameters
        self.kappa, self.n = kappa, n
        self.rho = torch.nn.Parameter(torch.tensor(_inv_softplus(sigma_init),
                                                   dtype=self.means[0].dtype,
                                                   device=self.means[0].device))
        self._epoch_loss = 0.0
        self._epoch_steps = 0

    def prior_terms(self):
        """sigma, lambda*, tau*, (KL_bb + KL_head)/(kappa N), ||m_bb-mu0||², ||m_head||²."""
        sigma = F.softplus(self.rho)
        sigma2 = sigma * sigma
        sq_bb = sum(((p - m0) ** 2).sum() for (_, p), m0 in zip(self.bb, self.mu0))
        sq_head = sum((p ** 2).sum() for _, p in self.head)
        lam, kl_bb = profiled_prior(sq_bb, self.d_bb, sigma2)
        tau, kl_head = profiled_prior(sq_head, self.d_head, sigma2)
        return sigma, lam, tau, (kl_bb + kl_head) / (self.kappa * self.n), sq_bb, sq_head

    def sampled(self, sigma) -> dict[str, torch.Tensor]:
        return sample_weights(self.names, self.means, sigma)

    def parameters(self) -> list[torch.Tensor]:
        return [self.rho]

    def forward(self, loop: Loop, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net.model, self.sampled(F.softplus(self.rho)), (x,))

    def penalty(self, loop: Loop) -> torch.Tensor:
        return self.prior_terms()[3]

    def after_step(self, loop: Loop) -> None:
        self._epoch_loss += loop.loss
        self._epoch_steps += 1

    def on_epoch_end(self, loop: Loop) -> dict[str, float]:
        with torch.no_grad():
            sigma, lam, tau, kl_term, _, _ = self.prior_terms()
        steps = max(1, self._epoch_steps)
        fields = {"objective": self._epoch_loss / steps,
                  "kl_term": float(kl_term), "sigma": float(sigma),
                  "lambda": float(lam), "tau": float(tau)}
        self._epoch_loss = 0.0
        self._epoch_steps = 0
        return fields


def fit_de_elbo(method: DEELBo, data: FitData, config: dict[str, float],
                report: Report) -> Fitted:
    """``DEELBo.fit`` (see its docstring): one run of ``method``'s sweep at ``config["lr"]``."""
    method.check_options()
    started = time.perf_counter()
    task = data.task
    lr = float(config["lr"])
    net = data.make_network()
    model = net.model
    x, y = data.train
    n = len(y)
    if not net.head_parameters():
        raise BenchError(f"{method.name}: the network has no head parameters ({net.head!r})")
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise BenchError(f"{method.name}: frozen parameters are not supported: {frozen[:3]}")
    d = sum(p.numel() for p in model.parameters())
    hook = VariationalHook(net, method.sigma_init, method.kappa_for(d, n), n,
                           centred_at_pretrained(task.regularizer))
    # bf16: the sampled forward pass and the NLL under autocast; the KL term, sigma and
    # the final objective (sampled_nll) stay float32
    train_config = TrainConfig(lr=lr, steps=task.steps, batch_size=task.batch_size,
                               seed=data.seed, momentum=method.momentum,
                               clip_norm=method.clip_norm, precision=task.precision)
    try:
        result = fine_tune(net, None, data.train, train_config,
                           callback=lambda e: report(e.step, epoch_metrics(e)),
                           hooks=[hook])
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{method.name} (lr={lr}): {err}") from None

    with torch.no_grad():
        sigma, lam, tau, kl_term, sq_bb, sq_head = hook.prior_terms()
    objective: float | None = None
    train_nll: float | None = None
    eval_s = result.eval_s
    if not result.stopped_early:
        if method.objective_samples == 0:
            objective = result.final_loss
            train_nll = objective - float(kl_term)
        else:
            eval_started = time.perf_counter()
            train_nll = sampled_nll(model, hook.names, hook.means, sigma, x, y,
                                    method.objective_samples)
            objective = train_nll + float(kl_term)
            eval_s += time.perf_counter() - eval_started
        if not math.isfinite(objective):
            raise TrainingDiverged(f"{method.name} final objective is {objective} (lr={lr})")
    model.train()
    info = {"lambda": float(lam), "tau": float(tau), "sigma": float(sigma),
            "sigma_init": float(method.sigma_init), "kappa": float(hook.kappa),
            "objective": objective, "lr": lr,
            "train_nll": train_nll, "kl_term": float(kl_term),
            "backbone_shift": float(sq_bb) / hook.d_bb,
            "head_sq_norm": float(sq_head) / hook.d_head,
            "d_backbone": hook.d_bb, "d_head": hook.d_head, "n": n,
            "objective_samples": method.objective_samples,
            "stopped_early": result.stopped_early,
            "wall_s": time.perf_counter() - started}
    if task.precision != "float32":  # the default's records stay as they were
        info["precision"] = task.precision
    return Fitted(net, objective=objective, info=info, steps_done=result.steps_done,
                  train_s=result.train_s, eval_s=eval_s)


@torch.no_grad()
def sampled_nll(model, names, means, sigma, x, y, samples: int, chunk: int = 256) -> float:
    """Mean over posterior samples of the full-data mean NLL, in eval mode; the model
    keeps its mean parameters."""
    model.eval()
    n = len(y)
    total = 0.0
    for _ in range(samples):
        weights = sample_weights(names, means, sigma)
        nll_sum = sum(float(F.cross_entropy(functional_call(model, weights, (x[i:i + chunk],)),
                                            y[i:i + chunk], reduction="sum"))
                      for i in range(0, n, chunk))
        total += nll_sum / n
    return total / samples
