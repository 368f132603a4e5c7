"""A task: which data, how many examples, which backbone, image size, regularizer family
and training length. ``Task.load(seed)`` prepares the tensors a trial trains on."""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field

import torch

from bench.contract.errors import BenchError
from bench.contract.names import task_name
from bench.contract.options import (require_bool, require_int, require_positive,
                                    require_precision)
from bench.contract.space import LR, Param
from bench.zoo.backbones import backbone_info, build_backbone
from bench.zoo.data import (Split, StudyPreprocess, dataset_info, load_dataset, prepare_images,
                            stratified_indices, stratified_split, study_statistics)
from bench.zoo.network import Network
from bench.zoo.noise import LabelNoise
from bench.zoo.regularizers import regularizer_class
from bench.zoo.selflabel_config import SelfLabelingConfig

VAL_FRACTION = 0.2  # search methods' stratified 80/20 train/validation split
PREPROCESSING = ("resize", "study")
KEEP = ("final", "best-val")  # which network a search trial's standard fit keeps


@dataclass(frozen=True)
class Task:
    """One fine-tuning problem. ``test_limit`` caps the fixed test set (stratified, fixed)
    to keep evaluation cheap on CPUs; None uses all of it."""

    dataset: str
    n: int
    backbone: str
    regularizer: str = "l2sp"
    image_size: int | None = None
    steps: int = 100
    batch_size: int = 32
    test_limit: int | None = None
    name: str = ""
    space: tuple[Param, ...] = ()  # overrides of the default search space, by name
    cap_s: float | None = None  # this task's compute cap, instead of the suite budget's
    #: corrupt the N training labels: ``{ kind = "uniform" | "flip" | "pairflip",
    #: rate = 0.4 }`` (bench.zoo.noise)
    label_noise: LabelNoise | None = None
    #: with label noise, corrupt only the search split's 80% and keep the validation 20%'s
    #: true labels, as Li & Zhang do (default: true whenever label_noise is set); false:
    #: noise over all N, the validation split noisy too
    clean_validation: bool | None = None
    #: which network a search trial's standard fit keeps: "final" (the default) or
    #: "best-val", the epoch of best validation accuracy, as Li & Zhang do; a fit without
    #: a validation split (a retrain, a learned run) keeps its final network either way
    keep: str = "final"
    #: with keep = "best-val": stop after this many epochs without a better validation
    #: accuracy (the authors' early_stop = 10); None trains all ``steps``
    patience: int | None = None
    #: fine-tune only the last k blocks (and the head): the frozen rest runs once per
    #: seed and its outputs are cached (None: the whole network is trained)
    trainable_blocks: int | None = None
    #: train with self-labeling (Li & Zhang 2021), any regularizer: ``{}`` for the authors'
    #: defaults; its options named in ``space`` are tuned
    self_labeling: SelfLabelingConfig | None = None
    #: GPU speed options (docs/methods.md#gpu-speed-options): "float32" (exact, the
    #: default) or "bf16" (autocast of the training forward pass and loss)
    precision: str = "float32"
    #: the network and the image tensors in torch.channels_last memory format (layout only)
    channels_last: bool = False
    #: "resize" (resized once, backbone's normalisation) or "study": the DE-ELBo study's
    #: 256 px resize, its subset normalisation, random 224 px crops and flips in training
    #: (docs/methods.md#the-studys-tasks-live)
    preprocess: str = "resize"

    def __post_init__(self) -> None:
        for key in ("dataset", "backbone", "regularizer", "name"):
            if not isinstance(getattr(self, key), str):
                raise BenchError(f"task {key} must be a string, got {getattr(self, key)!r}")
        require_int("task n", self.n, 2)
        require_int("task steps", self.steps, 1)
        require_int("task batch_size", self.batch_size, 1)
        require_precision("task precision", self.precision)
        require_bool("task channels_last", self.channels_last)
        for key in ("image_size", "test_limit"):
            if getattr(self, key) is not None:
                require_int(f"task {key}", getattr(self, key), 1)
        if self.cap_s is not None:
            require_positive("task cap_s", self.cap_s)
        if self.label_noise is not None:
            object.__setattr__(self, "label_noise", LabelNoise.of(self.label_noise))
        if self.clean_validation is None:
            object.__setattr__(self, "clean_validation", self.label_noise is not None)
        require_bool("task clean_validation", self.clean_validation)
        if self.keep not in KEEP:
            raise BenchError(f"task keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.patience is not None:
            require_int("task patience", self.patience, 0)
            if self.keep != "best-val":
                raise BenchError("task patience stops a fit that keeps its best validation "
                                 "epoch: it needs keep = \"best-val\"")
        if self.clean_validation and self.label_noise is None:
            raise BenchError("task clean_validation keeps the validation labels clean of "
                             "label_noise, which the task does not set")
        if self.self_labeling is not None:
            object.__setattr__(self, "self_labeling", SelfLabelingConfig.of(self.self_labeling))
        dataset_info(self.dataset)
        info = backbone_info(self.backbone)
        defaults = {p.name for p in self._tunable()}
        for param in self.space:
            if param.name not in defaults:
                what = " and self_labeling" if self.self_labeling else ""
                raise BenchError(f"task space: {self.regularizer} with lr{what} has no "
                                 f"hyperparameter {param.name!r}; it has: "
                                 f"{', '.join(sorted(defaults))}")
        if self.image_size is None:
            object.__setattr__(self, "image_size", info.default_size)
        info.check_image_size(self.image_size)
        if self.preprocess not in PREPROCESSING:
            raise BenchError(f"task preprocess must be one of {', '.join(PREPROCESSING)}, "
                             f"got {self.preprocess!r}")
        if self.preprocess == "study" and self.trainable_blocks is not None:
            raise BenchError("task preprocess 'study' crops anew every step: it cannot take "
                             "trainable_blocks (which caches the frozen prefix's outputs)")
        if self.trainable_blocks is not None:
            if info.split is None:
                raise BenchError(f"task trainable_blocks: backbone {self.backbone} cannot be "
                                 "split (only efficientnet-lite0 can)")
            require_int("task trainable_blocks", self.trainable_blocks, 0)
            if self.trainable_blocks > info.blocks:
                raise BenchError(f"task trainable_blocks must be <= {info.blocks} for "
                                 f"{self.backbone}, got {self.trainable_blocks}")
        if not self.name:
            noise = self.label_noise
            object.__setattr__(self, "name", task_name(
                self.dataset, self.n, self.backbone, self.trainable_blocks,
                (noise.kind, noise.rate) if noise else None))

    def _tunable(self) -> tuple[Param, ...]:
        """Every hyperparameter ``space`` may name: lr, the regularizer's, self-labeling's."""
        extra = SelfLabelingConfig.SPACE if self.self_labeling is not None else ()
        return (LR, *regularizer_class(self.regularizer).space, *extra)

    def search_space(self) -> tuple[Param, ...]:
        """The learning rate and the regularizer's hyperparameters, with overrides, then
        the self-labeling options that ``space`` names (the others stay fixed)."""
        override = {p.name: p for p in self.space}
        defaults = (LR, *regularizer_class(self.regularizer).space)
        tuned = tuple(p for p in self.space if p.name in SelfLabelingConfig.names())
        return tuple(override.get(p.name, p) for p in defaults) + tuned

    def check_data(self) -> None:
        """Load the data set (slow) and check N fits its training pool and ``test_limit``
        its test set (a larger limit would silently mean all of it)."""
        data = load_dataset(self.dataset)
        pool = len(data.train_y)
        if self.n > pool:
            raise BenchError(f"task {self.name}: N={self.n} exceeds the {pool} training "
                             f"examples of {self.dataset}")
        if self.test_limit is not None and self.test_limit > len(data.test_y):
            raise BenchError(f"task {self.name}: test_limit {self.test_limit} exceeds the "
                             f"{len(data.test_y)} test examples of {self.dataset} (leave it "
                             "out to use them all)")
        if self.preprocess == "study":
            self._check_study_input(data.channels)

    def load(self, seed: int) -> TaskData:
        data = load_dataset(self.dataset)
        info = backbone_info(self.backbone)

        def prep(x: torch.Tensor) -> torch.Tensor:
            return prepare_images(x, self.image_size, info.channels, info.mean, info.std)

        idx = stratified_indices(data.train_y, self.n, seed)
        test_x, test_y = data.test_x, data.test_y
        if self.test_limit is not None and self.test_limit < len(test_y):
            keep = stratified_indices(test_y, self.test_limit, 0)
            test_x, test_y = test_x[keep], test_y[keep]
        train_y, flipped, split = data.train_y[idx], None, None
        if self.label_noise is not None and self.clean_validation:
            # the search split, drawn on the true labels as without noise; only its
            # training part is corrupted (Li & Zhang copy the validation set first)
            split = stratified_split(train_y, VAL_FRACTION, seed)
            train_y, flipped = self.label_noise.corrupt(train_y, data.num_classes, seed,
                                                        among=split[0])
        elif self.label_noise is not None:
            train_y, flipped = self.label_noise.corrupt(train_y, data.num_classes, seed)
        if self.preprocess == "study":  # uint8 here; the network's input hook does the rest
            self._check_study_input(data.channels)
            train_x = data.train_x[idx]
        else:
            train_x, test_x = prep(data.train_x[idx]), prep(test_x)
        if self.trainable_blocks is not None:  # the frozen prefix, once
            prefix, _ = self._split(data.num_classes, seed)
            train_x, test_x = _outputs(prefix, train_x), _outputs(prefix, test_x)
        if self.channels_last:  # once per task and seed; moving to a device keeps it
            train_x, test_x = _channels_last(train_x), _channels_last(test_x)
        return TaskData(self, seed, (train_x, train_y), (test_x, test_y), data.num_classes,
                        flipped=flipped, split_indices=split)

    def _check_study_input(self, channels: int) -> None:
        if channels != backbone_info(self.backbone).channels:
            takes = backbone_info(self.backbone).channels
            raise BenchError(f"task {self.name}: preprocess 'study' keeps the images' channels: "
                             f"{self.dataset} has {channels}, {self.backbone} takes {takes}")

    def study_preprocess(self, train_x: torch.Tensor) -> StudyPreprocess:
        """The study's input pipeline, normalised by the statistics of ``train_x``."""
        mean, std = study_statistics(train_x)
        return StudyPreprocess(mean, std, resize=round(self.image_size * 256 / 224),
                               crop=self.image_size)

    def _split(self, num_classes: int, seed: int):
        """(frozen prefix, trainable network) of a fresh network for ``seed``."""
        with contextlib.redirect_stdout(io.StringIO()):  # the weights package prints
            net = build_backbone(self.backbone, num_classes, seed)
        return backbone_info(self.backbone).split(net, self.trainable_blocks)


@dataclass(frozen=True, eq=False)
class TaskData:
    """A task's prepared tensors for one seed: all N training examples and the test set;
    ``flipped``: indices of the training labels its label noise corrupted (None: no noise);
    ``split_indices``: the search split fixed when the data were made (clean validation),
    else None (drawn on the labels by ``split``)."""

    task: Task
    seed: int
    train: Split
    test: Split
    num_classes: int
    device: torch.device = torch.device("cpu")
    flipped: torch.Tensor | None = None
    split_indices: tuple[torch.Tensor, torch.Tensor] | None = None
    #: the first network built, and the CPU random state its building left: later calls
    #: copy it rather than build it again (a reused worker's trials; issue 25)
    built: list = field(default_factory=list, repr=False, compare=False)

    def to(self, device) -> TaskData:
        """The same data on ``device``; networks it makes land there too."""
        if torch.device(device) == self.train[0].device:
            return self
        moved = [tuple(t.to(device) for t in split) for split in (self.train, self.test)]
        return TaskData(self.task, self.seed, *moved, self.num_classes, torch.device(device),
                        self.flipped, self.split_indices)

    def split(self, val_fraction: float = VAL_FRACTION) -> tuple[Split, Split]:
        """The stratified train/validation split of the N examples for this seed."""
        x, y = self.train
        if self.split_indices is not None and val_fraction == VAL_FRACTION:
            tr, va = self.split_indices
        else:
            tr, va = stratified_split(y.cpu(), val_fraction, self.seed)
        tr, va = tr.to(y.device), va.to(y.device)
        return (x[tr], y[tr]), (x[va], y[va])

    def network(self) -> Network:
        """A fresh pretrained backbone with a new head, initialised from the seed (in
        channels_last memory format if the task asks for it). Built once; every later call
        returns a deep copy of it and leaves the random state as building it would have."""
        if self.built:
            template, cpu_state = self.built
            torch.manual_seed(self.seed)  # what building seeds (CUDA too) ...
            torch.set_rng_state(cpu_state)  # ... and the CPU stream after the head's init
            return copy.deepcopy(template).to(self.device)
        net = self._build_network()
        # kept in host memory: a trial's share of a GPU holds only its own network
        self.built[:] = [copy.deepcopy(net).to("cpu"), torch.get_rng_state()]
        return net

    def _build_network(self) -> Network:
        if self.task.trainable_blocks is not None:
            net = self.task._split(self.num_classes, self.seed)[1]
        else:
            with contextlib.redirect_stdout(io.StringIO()):  # the weights package prints
                net = build_backbone(self.task.backbone, self.num_classes, self.seed)
        if self.task.channels_last:
            net.model.to(memory_format=torch.channels_last)
        if self.task.preprocess == "study":  # every forward pass: crops, flips, normalises
            net.model.register_forward_pre_hook(self.task.study_preprocess(self.train[0]))
        return net.to(self.device)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Image batches (N, C, H, W) in channels_last format; other tensors as they are.
    Strides set outright: ``contiguous`` would keep a one-channel tensor's strides (the
    same memory), which convolutions then do not read as channels_last."""
    if x.dim() != 4:
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


@torch.no_grad()
def _outputs(module: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([module(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
