"""Data-emphasized ELBo (Harvey, Petrov, Hughes 2024) and the plain-ELBo ablation.

METHODS.md 3a. L2-SP read as a Gaussian prior, backbone ``w_bb ~ N(mu0, lambda I)`` and
head ``w_head ~ N(0, tau I)``; variational posterior ``q(w) = N(m, sigma^2 I)`` with one
shared ``sigma = softplus(rho)``. Every step draws ``w = m + sigma * eps`` (one sample, eps
fresh), profiles lambda and tau out in closed form,

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

from bench import schema as S
from bench.errors import BenchError
from bench.options import is_number, require_int, require_positive, require_positives
from bench.method import FINISHED, Context, FitData, Fitted, Method, Report, Result
from bench.train import TrainingDiverged, batch_stream, optimizer_step

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


class DEELBo(Method):
    """Learn the L2-SP prior variances with the data-emphasized ELBo; sweep the lr.

    Options (stored as given; checked when a run starts):
    - ``lrs``: the learning rates of the sweep, run in this order (authors' four).
    - ``kappa``: ``"data-emphasized"`` (kappa = D/N) or a positive number (1: plain ELBo).
    - ``sigma_init``: initial posterior standard deviation softplus(rho).
    - ``momentum``, ``clip_norm``: SGD Nesterov momentum and the gradient-norm clip
      (None: no clipping).
    - ``objective_samples``: Monte Carlo samples of the final objective (see ``fit``);
      0 uses the last training step's minibatch loss instead (no extra compute).

    After ``start``: ``best_`` holds the incumbent of the sweep so far
    (``{"trial_id", "lr", "objective"}``, None before the first successful run).
    """

    name = "de-elbo"
    uses_validation = False

    def __init__(self, lrs=(0.1, 0.01, 1e-3, 1e-4), kappa=DATA_EMPHASIZED,
                 sigma_init: float = 1e-4, momentum: float = 0.9,
                 clip_norm: float | None = 1.0, objective_samples: int = 10) -> None:
        self.lrs = lrs
        self.kappa = kappa
        self.sigma_init = sigma_init
        self.momentum = momentum
        self.clip_norm = clip_norm
        self.objective_samples = objective_samples

    # -- options

    def _check_options(self) -> None:
        require_positives("lrs", self.lrs)
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

    # -- driver side

    def start(self, context: Context) -> None:
        super().start(context)
        self._check_options()
        self.pending_ = [float(v) for v in self.lrs]
        self.best_: dict | None = None

    def suggest(self, trial_id: str):
        if not self.pending_:
            return FINISHED
        return {"lr": self.pending_.pop(0)}

    def on_result(self, result: Result) -> None:
        if result.status == S.OK and result.score is not None and math.isfinite(result.score) \
                and (self.best_ is None or result.score < self.best_["objective"]):
            self.best_ = {"trial_id": result.trial_id, "lr": result.config.get("lr"),
                          "objective": float(result.score)}

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

        ``info``: ``lambda``, ``tau`` (the profiled prior variances at the final m and
        sigma), ``sigma``, ``kappa``, ``objective``, ``lr`` (this run's; the sweep's winner
        is the run with the lowest objective), ``train_nll`` and ``kl_term`` (the two parts
        of the objective), ``backbone_shift`` = ||m_bb - mu0||^2 / D_bb, ``head_sq_norm``
        = ||m_head||^2 / D_head, ``d_backbone``, ``d_head``, ``n``, ``objective_samples``,
        ``stopped_early``, ``wall_s``. Raises ``TrainingDiverged`` if the loss (or the final
        objective) is not finite.
        """
        self._check_options()
        started = time.perf_counter()
        task = data.task
        lr = float(config["lr"])
        net = data.make_network()
        model = net.model
        x, y = data.train
        n = len(y)
        bb = net.backbone_parameters()
        head = net.head_parameters()
        if not head:
            raise BenchError(f"{self.name}: the network has no head parameters ({net.head!r})")
        frozen = [name for name, p in bb + head if not p.requires_grad]
        if frozen:
            raise BenchError(f"{self.name}: frozen parameters are not supported: {frozen[:3]}")
        d_bb = sum(p.numel() for _, p in bb)
        d_head = sum(p.numel() for _, p in head)
        kappa = self.kappa_for(d_bb + d_head, n)
        mu0 = [net.mu0[name].detach().to(p.dtype) for name, p in bb]
        names = [name for name, _ in bb + head]
        means = [p for _, p in bb + head]  # m is the model's own parameters
        rho = torch.nn.Parameter(torch.tensor(_inv_softplus(self.sigma_init),
                                              dtype=means[0].dtype))

        def prior_terms():
            sigma = F.softplus(rho)
            sigma2 = sigma * sigma
            sq_bb = sum(((p - m0) ** 2).sum() for (_, p), m0 in zip(bb, mu0))
            sq_head = sum((p ** 2).sum() for _, p in head)
            lam, kl_bb = profiled_prior(sq_bb, d_bb, sigma2)
            tau, kl_head = profiled_prior(sq_head, d_head, sigma2)
            return sigma, lam, tau, (kl_bb + kl_head) / (kappa * n), sq_bb, sq_head

        def sampled(sigma):
            return {name: p + sigma * torch.randn_like(p) for name, p in zip(names, means)}

        torch.manual_seed(data.seed)
        generator = torch.Generator().manual_seed(data.seed)
        batch_size = min(task.batch_size, n)
        batches = batch_stream(n, batch_size, generator)
        steps_per_epoch = max(1, math.ceil(n / task.batch_size))
        params = means + [rho]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=True,
                                    weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=task.steps)
        model.train()

        train_s = eval_s = 0.0
        step, stopped, last_loss, last_nll = 0, False, float("nan"), float("nan")
        epoch_nll = epoch_loss = 0.0
        epoch_steps = 0
        while step < task.steps and not stopped:
            step_started = time.perf_counter()
            idx = next(batches)
            sigma, lam, tau, kl_term, _, _ = prior_terms()
            logits = functional_call(model, sampled(sigma), (x[idx],))
            nll = F.cross_entropy(logits, y[idx])
            loss = nll + kl_term
            last_loss, last_nll = float(loss.detach()), float(nll.detach())
            if not math.isfinite(last_loss):
                raise TrainingDiverged(f"{self.name} objective is {last_loss} at step "
                                       f"{step + 1} (lr={lr})")
            optimizer_step(loss, optimizer, schedule, params, self.clip_norm)
            step += 1
            epoch_nll += last_nll
            epoch_loss += last_loss
            epoch_steps += 1
            train_s += time.perf_counter() - step_started
            if step % steps_per_epoch == 0 or step == task.steps:
                metrics = {"train_loss": epoch_nll / epoch_steps,
                           "objective": epoch_loss / epoch_steps,
                           "lambda": float(lam.detach()), "tau": float(tau.detach()),
                           "sigma": float(sigma.detach())}
                epoch_nll = epoch_loss = 0.0
                epoch_steps = 0
                stopped = bool(report(step, metrics)) and step < task.steps

        with torch.no_grad():
            sigma, lam, tau, kl_term, sq_bb, sq_head = prior_terms()
        objective: float | None = None
        train_nll: float | None = None
        if not stopped:
            if self.objective_samples == 0:
                objective, train_nll = last_loss, last_nll
            else:
                eval_started = time.perf_counter()
                train_nll = self._sampled_nll(model, names, means, sigma, x, y)
                objective = train_nll + float(kl_term)
                eval_s += time.perf_counter() - eval_started
            if not math.isfinite(objective):
                raise TrainingDiverged(f"{self.name} final objective is {objective} (lr={lr})")
        model.train()
        info = {"lambda": float(lam), "tau": float(tau), "sigma": float(sigma),
                "kappa": float(kappa), "objective": objective, "lr": lr,
                "train_nll": train_nll, "kl_term": float(kl_term),
                "backbone_shift": float(sq_bb) / d_bb, "head_sq_norm": float(sq_head) / d_head,
                "d_backbone": d_bb, "d_head": d_head, "n": n,
                "objective_samples": self.objective_samples, "stopped_early": stopped,
                "wall_s": time.perf_counter() - started}
        return Fitted(net, objective=objective, info=info, steps_done=step, train_s=train_s,
                      eval_s=eval_s)

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
                 objective_samples: int = 10) -> None:
        super().__init__(lrs=lrs, kappa=kappa, sigma_init=sigma_init, momentum=momentum,
                         clip_norm=clip_norm, objective_samples=objective_samples)
