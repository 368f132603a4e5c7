"""Data-emphasized ELBo (Harvey, Petrov, Hughes 2024) and the plain-ELBo ablation.

docs/methods.md#data-emphasized-elbo. L2-SP read as a Gaussian prior, backbone
``w_bb ~ N(mu0, lambda I)`` and head ``w_head ~ N(0, tau I)``; variational posterior
``q(w) = N(m, sigma^2 I)`` with one shared ``sigma = softplus(rho)``. Every step draws
``w = m + sigma * eps`` (one sample, eps fresh), profiles lambda and tau out in closed form,

    lambda* = ||m_bb - mu0||^2 / D_bb + sigma^2,   tau* = ||m_head||^2 / D_head + sigma^2,
    KL_g    = (D_g / 2) * log(var*_g / sigma^2),

and minimises ``mean NLL + (KL_bb + KL_head) / (kappa N)``: kappa = D/N for the DE ELBo
(the KL weight becomes 1/D), kappa = 1 for the plain ELBo. SGD with Nesterov momentum 0.9,
no weight decay, cosine decay over all steps, gradient norm clipped to 1.0, over m and rho
together (as the authors' code, which registers rho as a model parameter). The sweep runs
one training per learning rate on all N; the run with the lowest final training objective
is kept (by the harness's curves: incumbent = lowest ``objective``). No validation data is
used. The network the harness evaluates holds the posterior mean m.

The network is never rewritten: each forward pass is ``torch.func.functional_call(model,
{name: m + sigma*eps}, x)`` over every parameter, so any backbone of the harness works;
buffers (BatchNorm running statistics) stay the module's own and update as usual.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from bench.errors import BenchError
from bench.fit import epoch_metrics
from bench.method import FitData, Fitted, Report
from bench.options import is_number, require_int, require_positive
from bench.train import Hook, Loop, TrainConfig, TrainingDiverged, fine_tune
from methods._sweep import LearnedMethod, centred_at_pretrained

DATA_EMPHASIZED = "data-emphasized"


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
                                                   dtype=self.means[0].dtype))
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
        return {name: p + sigma * torch.randn_like(p) for name, p in zip(self.names, self.means)}

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


class DEELBo(LearnedMethod):
    """Learn the L2-SP prior variances with the data-emphasized ELBo; sweep the lr.

    Options (stored as given; checked when a run starts):
    - ``lrs``: the learning rates of the sweep, run in this order (authors' four).
    - ``kappa``: ``"data-emphasized"`` (kappa = D/N) or a positive number (1: plain ELBo).
    - ``sigma_init``: initial posterior standard deviation softplus(rho) (authors: 1e-4;
      runs much shorter than theirs may need more, see
      docs/methods.md#data-emphasized-elbo).
    - ``momentum``, ``clip_norm``: SGD Nesterov momentum and the gradient-norm clip
      (None: no clipping).
    - ``objective_samples``: Monte Carlo samples of the final objective (see ``fit``);
      0 uses the last training step's minibatch loss instead (no extra compute).
    - ``allow_regularizer_mismatch``: run on a task whose regularizer is neither l2sp
      nor wd (see ``methods._sweep``).

    After ``start``: ``best_`` holds the incumbent of the sweep so far
    (``{"trial_id", "lr", "objective"}``, None before the first successful run).
    """

    name = "de-elbo"

    def __init__(self, lrs=(0.1, 0.01, 1e-3, 1e-4), kappa=DATA_EMPHASIZED,
                 sigma_init: float = 1e-4, momentum: float = 0.9,
                 clip_norm: float | None = 1.0, objective_samples: int = 10,
                 allow_regularizer_mismatch: bool = False) -> None:
        self.lrs = lrs
        self.kappa = kappa
        self.sigma_init = sigma_init
        self.momentum = momentum
        self.clip_norm = clip_norm
        self.objective_samples = objective_samples
        self.allow_regularizer_mismatch = allow_regularizer_mismatch

    # -- options

    def check_options(self) -> None:
        if self.kappa != DATA_EMPHASIZED and not (is_number(self.kappa) and self.kappa > 0):
            raise BenchError(f"kappa must be {DATA_EMPHASIZED!r} or a number > 0, "
                             f"got {self.kappa!r}")
        require_positive("sigma_init", self.sigma_init)
        if not (is_number(self.momentum) and 0 <= self.momentum < 1):
            raise BenchError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.clip_norm is not None:
            require_positive("clip_norm", self.clip_norm)
        require_int("objective_samples", self.objective_samples, 0)

    def kappa_for(self, d: int, n: int) -> float:
        """kappa for D parameters and N training examples."""
        return d / n if self.kappa == DATA_EMPHASIZED else float(self.kappa)

    # -- worker side (runs on an unstarted copy: uses options only)

    def fit(self, data: FitData, config: dict[str, float], report: Report) -> Fitted:
        """One run of the sweep at ``config["lr"]`` on all N training examples.

        ``Fitted.objective`` is the final training objective, lower is better, as the
        authors select by it (their ``train_loss`` of the last epoch): at the end of
        training, with the model in eval mode (BatchNorm on its running statistics), the
        mean over ``objective_samples`` (default 10) posterior samples w = m + sigma*eps of
        the mean NLL over all N training examples, plus (KL_bb + KL_head)/(kappa N) at the
        final m and sigma. Its cost is counted in ``eval_s``. With ``objective_samples=0``
        it is the last step's minibatch loss. A run stopped early (budget) has objective
        None (no evaluation is spent on it).

        Per-epoch reports carry ``objective``, ``train_nll``, ``kl_term``, ``sigma``,
        ``lambda`` and ``tau`` (so a reader sees whether sigma grows).
        ``info``: ``lambda``, ``tau`` (the profiled prior variances at the final m and
        sigma), ``sigma``, ``sigma_init``, ``kappa``, ``objective``, ``lr`` (this run's; the
        sweep's winner is the run with the lowest objective), ``train_nll`` and
        ``kl_term`` (the two parts of the objective), ``backbone_shift`` = ||m_bb -
        mu0||^2 / D_bb, ``head_sq_norm`` = ||m_head||^2 / D_head, ``d_backbone``,
        ``d_head``, ``n``, ``objective_samples``, ``stopped_early``, ``wall_s``. Raises
        ``TrainingDiverged`` if the loss (or the final objective) is not finite.
        """
        self.check_options()
        started = time.perf_counter()
        task = data.task
        lr = float(config["lr"])
        net = data.make_network()
        model = net.model
        x, y = data.train
        n = len(y)
        if not net.head_parameters():
            raise BenchError(f"{self.name}: the network has no head parameters ({net.head!r})")
        frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
        if frozen:
            raise BenchError(f"{self.name}: frozen parameters are not supported: {frozen[:3]}")
        d = sum(p.numel() for p in model.parameters())
        hook = VariationalHook(net, self.sigma_init, self.kappa_for(d, n), n,
                               centred_at_pretrained(task.regularizer))
        train_config = TrainConfig(lr=lr, steps=task.steps, batch_size=task.batch_size,
                                   seed=data.seed, momentum=self.momentum,
                                   clip_norm=self.clip_norm)
        try:
            result = fine_tune(net, None, data.train, train_config,
                               callback=lambda e: report(e.step, epoch_metrics(e)),
                               hooks=[hook])
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{self.name} (lr={lr}): {err}") from None

        with torch.no_grad():
            sigma, lam, tau, kl_term, sq_bb, sq_head = hook.prior_terms()
        objective: float | None = None
        train_nll: float | None = None
        eval_s = result.eval_s
        if not result.stopped_early:
            if self.objective_samples == 0:
                objective = result.final_loss
                train_nll = objective - float(kl_term)
            else:
                eval_started = time.perf_counter()
                train_nll = self._sampled_nll(model, hook.names, hook.means, sigma, x, y)
                objective = train_nll + float(kl_term)
                eval_s += time.perf_counter() - eval_started
            if not math.isfinite(objective):
                raise TrainingDiverged(f"{self.name} final objective is {objective} (lr={lr})")
        model.train()
        info = {"lambda": float(lam), "tau": float(tau), "sigma": float(sigma),
                "sigma_init": float(self.sigma_init), "kappa": float(hook.kappa),
                "objective": objective, "lr": lr,
                "train_nll": train_nll, "kl_term": float(kl_term),
                "backbone_shift": float(sq_bb) / hook.d_bb,
                "head_sq_norm": float(sq_head) / hook.d_head,
                "d_backbone": hook.d_bb, "d_head": hook.d_head, "n": n,
                "objective_samples": self.objective_samples,
                "stopped_early": result.stopped_early,
                "wall_s": time.perf_counter() - started}
        return Fitted(net, objective=objective, info=info, steps_done=result.steps_done,
                      train_s=result.train_s, eval_s=eval_s)

    @torch.no_grad()
    def _sampled_nll(self, model, names, means, sigma, x, y, chunk: int = 256) -> float:
        """Mean over posterior samples of the full-data mean NLL, in eval mode; the model
        keeps its mean parameters."""
        model.eval()
        n = len(y)
        total = 0.0
        for _ in range(self.objective_samples):
            weights = {name: p + sigma * torch.randn_like(p) for name, p in zip(names, means)}
            nll_sum = sum(float(F.cross_entropy(functional_call(model, weights, (x[i:i + chunk],)),
                                                y[i:i + chunk], reduction="sum"))
                          for i in range(0, n, chunk))
            total += nll_sum / n
        return total / self.objective_samples


class PlainELBo(DEELBo):
    """The ablation: the same method with kappa = 1 (the ordinary ELBo, KL weight 1/N)."""

    name = "elbo"

    def __init__(self, lrs=(0.1, 0.01, 1e-3, 1e-4), kappa=1.0, sigma_init: float = 1e-4,
                 momentum: float = 0.9, clip_norm: float | None = 1.0,
                 objective_samples: int = 10, allow_regularizer_mismatch: bool = False) -> None:
        super().__init__(lrs=lrs, kappa=kappa, sigma_init=sigma_init, momentum=momentum,
                         clip_norm=clip_norm, objective_samples=objective_samples,
                         allow_regularizer_mismatch=allow_regularizer_mismatch)
