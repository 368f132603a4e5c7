"""A fine-tunable network: the model, which parameters are backbone and which head, mu0."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(eq=False, repr=False)
class Network:
    """A pretrained model with a fresh head.

    ``head`` names the module of the new final layer; every other parameter is backbone.
    ``stage_of`` maps a backbone parameter name to its stage for layer-wise constraints
    (radius D·g^stage; each backbone's map and its source: docs/methods.md); a backbone
    parameter without a stage (a ResNet's stem) is left unconstrained. ``mu0`` holds the pretrained backbone values, and
    ``running_var0`` the pretrained running variance of each trained backbone BatchNorm,
    by the name of its weight (gamma): what BatchNorm constraints measure from.
    """

    model: nn.Module
    head: str
    stage_of: dict[str, int]
    mu0: dict[str, torch.Tensor] = field(default_factory=dict)
    running_var0: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.mu0:
            self.mu0 = {n: p.detach().clone() for n, p in self.backbone_parameters()}
        if not self.running_var0:
            self.running_var0 = {name: bn.running_var.detach().clone()
                                 for name, bn in self.batchnorms}

    def __repr__(self) -> str:  # short: the default would print every mu0 tensor
        count = sum(p.numel() for p in self.model.parameters())
        return f"Network({type(self.model).__name__}, {count:,} parameters, head {self.head!r})"

    def is_head(self, name: str) -> bool:
        return name == self.head or name.startswith(self.head + ".")

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if not self.is_head(n)]

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if self.is_head(n)]

    @functools.cached_property
    def layer_weights(self) -> tuple[str, ...]:
        """Names of the weight tensors of every convolution and linear layer, and the
        packed query/key/value projection of attention (a linear map kept as a bare
        parameter by ``nn.MultiheadAttention``)."""
        kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
        names = []
        for m, mod in self.model.named_modules():
            prefix = f"{m}." if m else ""
            if isinstance(mod, kinds):
                names.append(f"{prefix}weight")
            elif isinstance(mod, nn.MultiheadAttention) and mod.in_proj_weight is not None:
                names.append(f"{prefix}in_proj_weight")
        return tuple(names)

    @functools.cached_property
    def depthwise_weights(self) -> tuple[str, ...]:
        """Names of the backbone's depthwise convolution weights (one filter per channel)."""
        return tuple(f"{m}.weight" for m, mod in self.model.named_modules()
                     if isinstance(mod, nn.Conv2d) and mod.groups > 1
                     and mod.groups == mod.in_channels and not self.is_head(m))

    @functools.cached_property
    def batchnorms(self) -> tuple[tuple[str, nn.modules.batchnorm._BatchNorm], ...]:
        """(weight name, module) of every backbone BatchNorm with a trained scale (gamma)
        and running statistics."""
        trained = {n for n, p in self.backbone_parameters() if p.requires_grad}
        return tuple((f"{m}.weight" if m else "weight", mod)
                     for m, mod in self.model.named_modules()
                     if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine
                     and mod.track_running_stats
                     and (f"{m}.weight" if m else "weight") in trained)

    def to(self, device) -> "Network":
        """Move the model, mu0 and running_var0 to ``device`` (in place); returns self."""
        self.model.to(device)
        self.mu0 = {n: t.to(device) for n, t in self.mu0.items()}
        self.running_var0 = {n: t.to(device) for n, t in self.running_var0.items()}
        return self



def stages_by_top_level_module(model: nn.Module, head: str) -> dict[str, int]:
    """Stage = index of the parameter's top-level child module (a generic depth order)."""
    order: dict[str, int] = {}
    stage_of = {}
    for name, _ in model.named_parameters():
        top = name.split(".")[0]
        if top != head:
            stage_of[name] = order.setdefault(top, len(order))
    return stage_of
