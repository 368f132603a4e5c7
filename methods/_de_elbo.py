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

The training side (the variational hook, the run, the final objective) is
``methods._de_elbo_fit``, imported by ``fit`` on the worker.
"""

from __future__ import annotations

from bench.contract.errors import BenchError
from bench.contract.method import FitData, Fitted, Report
from bench.contract.options import is_number, require_int, require_positive
from methods._sweep import LearnedMethod

DATA_EMPHASIZED = "data-emphasized"


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
        ``d_head``, ``n``, ``objective_samples``, ``stopped_early``, ``wall_s``, and
        ``precision`` when the task's is not float32 (``"bf16"`` autocasts each training
        step's sampled forward pass and NLL; the KL term and the final objective stay
        float32). Raises
        ``TrainingDiverged`` if the loss (or the final objective) is not finite.
        """
        from methods._de_elbo_fit import fit_de_elbo  # worker side: the training loop

        return fit_de_elbo(self, data, config, report)


class PlainELBo(DEELBo):
    """The ablation: the same method with kappa = 1 (the ordinary ELBo, KL weight 1/N)."""

    name = "elbo"

    def __init__(self, lrs=(0.1, 0.01, 1e-3, 1e-4), kappa=1.0, sigma_init: float = 1e-4,
                 momentum: float = 0.9, clip_norm: float | None = 1.0,
                 objective_samples: int = 10, allow_regularizer_mismatch: bool = False) -> None:
        super().__init__(lrs=lrs, kappa=kappa, sigma_init=sigma_init, momentum=momentum,
                         clip_norm=clip_norm, objective_samples=objective_samples,
                         allow_regularizer_mismatch=allow_regularizer_mismatch)
