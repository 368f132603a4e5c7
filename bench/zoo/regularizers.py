"""Regularizer families: a penalty added to the mean training loss and/or a projection
applied after every optimiser step, with their hyperparameters' default search ranges.

Each family is a frozen dataclass whose fields are its hyperparameters; ``space`` lists
them as :class:`~bench.contract.space.Param`. Formulas: docs/methods.md#regularizer-families.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.contract.errors import BenchError
from bench.contract.options import FLOAT32_MAX, is_number
from bench.contract.space import STRENGTHS, Param
from bench.zoo.network import Network


@dataclass(frozen=True)
class Regularizer:
    """Base class: no penalty and no projection. Override what the family needs."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "no regularization"
    space: ClassVar[tuple[Param, ...]] = ()

    def penalty(self, net: Network) -> torch.Tensor | None:
        """A scalar added to the mean training loss, or None."""
        return None

    def project(self, net: Network) -> None:
        """Called after every optimiser step, under no_grad; edits parameters in place."""

    def hyperparameters(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _squared_distance(params, centres=None) -> torch.Tensor:
    terms = [((p - centres[n]) if centres is not None else p).pow(2).sum() for n, p in params]
    return torch.stack(terms).sum()


@dataclass(frozen=True)
class WeightDecay(Regularizer):
    """(beta/2)·||w||² over all parameters: the standard fine-tuning baseline."""

    beta: float = 0.0
    name: ClassVar[str] = "wd"
    description: ClassVar[str] = "weight decay toward zero: (beta/2)||w||^2"
    space: ClassVar[tuple[Param, ...]] = (Param("beta", 1e-6, 1e-2, grid=STRENGTHS),)

    def penalty(self, net: Network) -> torch.Tensor | None:
        if self.beta == 0:
            return None
        return 0.5 * self.beta * _squared_distance(net.model.named_parameters())


@dataclass(frozen=True)
class L2SP(Regularizer):
    """(alpha/2)·||w_bb − mu0||² + (beta/2)·||w_head||² (Li, Grandvalet, Davoine 2018)."""

    alpha: float = 0.0
    beta: float = 0.0
    name: ClassVar[str] = "l2sp"
    description: ClassVar[str] = "L2-SP: (alpha/2)||w_bb - mu0||^2 + (beta/2)||w_head||^2"
    space: ClassVar[tuple[Param, ...]] = (
        Param("alpha", 1e-6, 1e-2, grid=STRENGTHS),
        Param("beta", 1e-6, 1e-2, grid=STRENGTHS),
    )

    def penalty(self, net: Network) -> torch.Tensor | None:
        terms = []
        if self.alpha:
            terms.append(0.5 * self.alpha * _squared_distance(net.backbone_parameters(), net.mu0))
        if self.beta:
            terms.append(0.5 * self.beta * _squared_distance(net.head_parameters()))
        return sum(terms) if terms else None


def _shrink_rows_l1(t: torch.Tensor, radius: float) -> torch.Tensor:
    """t_j <- t_j / max(1, ||t_j||_1 / radius) for every output unit (row) j; a radius of 0
    is the ball's centre, exactly (the formula would divide 0 by 0 on unmoved rows)."""
    if radius <= 0:
        return torch.zeros_like(t)
    rows = t.reshape(t.shape[0], -1)
    scale = (rows.abs().sum(dim=1) / radius).clamp_(min=1.0)
    return (rows / scale[:, None]).reshape(t.shape)


def _shrink_frobenius(t: torch.Tensor, radius: float) -> torch.Tensor:
    """t <- t / max(1, ||t||_F / radius)."""
    if radius <= 0:
        return torch.zeros_like(t)
    return t / max(1.0, float(t.norm()) / radius)


BN_EPS = 1e-6  # the authors' epsilon in gamma / sqrt(running_var + eps)


def _clip_batchnorm(gamma: torch.Tensor, var: torch.Tensor, gamma0: torch.Tensor,
                    var0: torch.Tensor, radius: float) -> torch.Tensor:
    """MARS-SP's BatchNorm constraint (the authors' ``BatchNormLipschitzConstraint``): the
    layer's diagonal gain d = gamma / sqrt(running_var + eps) kept within ``radius`` of its
    pretrained value, elementwise; returns the gamma that gives the clipped gain."""
    scale, d0 = (var + BN_EPS).sqrt(), gamma0 / (var0 + BN_EPS).sqrt()
    return ((gamma / scale - d0).clamp(-radius, radius) + d0) * scale


@dataclass(frozen=True)
class MarsSP(Regularizer):
    """MARS-SP (Gouk, Hospedales, Pontil 2021): after each step, every conv/linear weight of
    the backbone is projected so that each output unit's L1 distance from its pretrained
    value is at most lambda_bb; the head's weight likewise around 0 with lambda_head; and,
    as the authors do, each backbone BatchNorm's gain gamma / sqrt(running_var + 1e-6)
    within lambda_bb of its pretrained gain, elementwise (for both norms). A depthwise
    convolution's rows are its channels (the layer's true operator norm)."""

    lambda_bb: float = 10.0
    lambda_head: float = 10.0
    name: ClassVar[str] = "mars-sp"
    description: ClassVar[str] = "MARS-SP: row-wise L1 ball around mu0 per conv/linear layer"
    space: ClassVar[tuple[Param, ...]] = (
        Param("lambda_bb", 1.6, 33.0, grid=(1.6, 4.0, 10.0, 33.0)),
        Param("lambda_head", 1.6, 33.0, grid=(1.6, 4.0, 10.0, 33.0)),
    )
    shrink = staticmethod(_shrink_rows_l1)

    def project(self, net: Network) -> None:
        params = dict(net.model.named_parameters())
        for name in net.layer_weights:
            w = params[name]
            if net.is_head(name):
                w.copy_(self.shrink(w, self.lambda_head))
            else:
                w0 = net.mu0[name]
                w.copy_(w0 + self.shrink_backbone(net, name, w - w0))
        for name, bn in net.batchnorms:
            bn.weight.copy_(_clip_batchnorm(bn.weight, bn.running_var, net.mu0[name],
                                            net.running_var0[name], self.lambda_bb))

    def shrink_backbone(self, net: Network, name: str, t: torch.Tensor) -> torch.Tensor:
        """Backbone weight ``name``'s change ``t`` projected into its ball."""
        return self.shrink(t, self.lambda_bb)


@dataclass(frozen=True)
class MarsSPKeras(MarsSP):
    """MARS-SP exactly as the authors' Keras code: a depthwise convolution (a Keras
    ``DepthwiseConv2D`` is a ``Conv2D``, whose kernel's |t| is summed over all axes but the
    last) is one row over all its channels, up to C times tighter than its operator norm."""

    name: ClassVar[str] = "mars-sp-keras"
    description: ClassVar[str] = "MARS-SP as the authors' Keras code (a depthwise kernel one row)"

    def shrink_backbone(self, net: Network, name: str, t: torch.Tensor) -> torch.Tensor:
        if name not in net.depthwise_weights:
            return super().shrink_backbone(net, name, t)
        return _shrink_rows_l1(t.reshape(1, -1), self.lambda_bb).reshape(t.shape)  # one row


@dataclass(frozen=True)
class MarsSPFrobenius(MarsSP):
    """MARS-SP's Frobenius variant: each layer's whole weight change in a Frobenius ball."""

    name: ClassVar[str] = "mars-sp-fro"
    description: ClassVar[str] = "MARS-SP, Frobenius variant: ||W - W0||_F <= lambda per layer"
    shrink = staticmethod(_shrink_frobenius)


@dataclass(frozen=True)
class LayerwiseConstraint(Regularizer):
    """Layer-wise distance constraints (Li & Zhang 2021, ``utils/constraint.py``
    ``FrobeniusConstraint``): every conv/linear weight of stage s is projected into the
    Frobenius ball of radius D·scale^s around its pretrained value, and each BatchNorm's
    gain gamma / sqrt(running_var + 1e-6) clipped elementwise to the same radius around its
    pretrained gain, as the authors do; the head's weight into the ball of radius D_head
    around 0. Biases skipped; parameters without a stage (a ResNet's stem) are free."""

    D: float = 1.0
    scale: float = 2.0
    D_head: float = 10.0
    name: ClassVar[str] = "layerwise"
    description: ClassVar[str] = "layer-wise Frobenius balls around mu0, radius D*scale^stage"
    space: ClassVar[tuple[Param, ...]] = (
        Param("D", 0.1, 10.0, grid=(0.1, 1.0, 10.0)),
        Param("scale", 1.0, 4.0, grid=(1.0, 2.0, 4.0), log=False),
        Param("D_head", 1.0, 100.0, grid=(1.0, 10.0, 100.0)),
    )

    def radius(self, net: Network, name: str) -> float | None:
        """The radius of backbone parameter ``name``; None: it has no stage (free)."""
        stage = net.stage_of.get(name)
        return None if stage is None else self.D * self.scale ** stage

    def project(self, net: Network) -> None:
        params = dict(net.model.named_parameters())
        for name in net.layer_weights:
            w = params[name]
            if net.is_head(name):
                w.copy_(_shrink_frobenius(w, self.D_head))
            elif (radius := self.radius(net, name)) is not None:
                w0 = net.mu0[name]
                w.copy_(w0 + _shrink_frobenius(w - w0, radius))
        for name, bn in net.batchnorms:
            if (radius := self.radius(net, name)) is not None:
                bn.weight.copy_(_clip_batchnorm(bn.weight, bn.running_var, net.mu0[name],
                                                net.running_var0[name], radius))


REGULARIZERS: dict[str, type[Regularizer]] = {
    cls.name: cls
    for cls in (Regularizer, WeightDecay, L2SP, MarsSP, MarsSPKeras, MarsSPFrobenius,
                LayerwiseConstraint)
}


def regularizer_class(name: str) -> type[Regularizer]:
    try:
        return REGULARIZERS[name]
    except KeyError:
        raise BenchError(f"unknown regularizer {name!r}; known: {', '.join(REGULARIZERS)}") from None


def make_regularizer(name: str, **hyperparameters: float) -> Regularizer:
    """Build a regularizer by name; unknown or non-finite hyperparameters are refused."""
    cls = regularizer_class(name)
    known = {p.name for p in cls.space}
    unknown = set(hyperparameters) - known
    if unknown:
        raise BenchError(f"regularizer {name!r} has no hyperparameter "
                         f"{', '.join(sorted(unknown))}; it takes: {', '.join(sorted(known)) or 'none'}")
    for key, value in hyperparameters.items():
        if not (isinstance(value, (int, float)) and value == value and value >= 0
                and value != float("inf")):
            raise BenchError(f"hyperparameter {key} must be a finite number >= 0, got {value!r}")
    return cls(**{k: float(v) for k, v in hyperparameters.items()})


def check_hyperparameter(what: str, name: str, regularizer: str, value: float) -> None:
    """A value training accepts for hyperparameter ``name``: a learning rate > 0, a
    regularizer's strength as its family accepts it (>= 0, finite); float32-finite."""
    if name == "lr":
        if not (is_number(value) and 0 < value <= FLOAT32_MAX):
            raise BenchError(f"{what}: lr {value!r} is not a learning rate training accepts "
                             f"(a number > 0 and at most {FLOAT32_MAX:.3g})")
        return
    if is_number(value) and abs(value) > FLOAT32_MAX:
        raise BenchError(f"{what}: {name} {value!r} is infinite in float32, as networks train")
    try:
        make_regularizer(regularizer, **{name: value})
    except BenchError as err:
        raise BenchError(f"{what}: {err}") from None
