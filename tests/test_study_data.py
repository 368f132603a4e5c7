"""The DE-ELBo study's tasks, live: Oxford-IIIT Pet and Flowers-102 read from tiny fake
copies in torchvision's on-disk layout (made here; download disabled, no network), the
study's input pipeline, its three torchvision backbones built without weights, and
suites/study-gpu.toml parsed (nothing trained, nothing downloaded)."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.contract.errors import BenchError
from bench.zoo import backbones, data
from bench.zoo.data import STUDY_LOAD_SIZE, StudyPreprocess, study_statistics
from bench.zoo.task import Task

ROOT = Path(__file__).resolve().parents[1]
PET_BREEDS = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]  # (name, species)


def _jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> None:
    """A photo-like image: ``colour`` with pixel noise of mean zero around it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(path.name)).integers(-20, 21, (size[1], size[0], 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _colour(i: int) -> tuple[int, int, int]:
    return (40 + 20 * i, 200 - 15 * i, 90 + 7 * i)


def fake_pets(root: Path, per_class: dict[str, int]) -> list[tuple[int, tuple]]:
    """oxford-iiit-pet/images/<breed>_<k>.jpg and annotations/{trainval,test}.txt (lines
    ``image_id class_id species breed_id``, 1-based) as torchvision reads them; returns
    (label, colour) of the trainval images in file order."""
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    trainval = []
    k = 0
    for split, count in per_class.items():
        lines = []
        for label, (breed, species) in enumerate(PET_BREEDS):
            for _ in range(count):
                k += 1
                image_id = f"{breed}_{k}"
                colour = _colour(k % 9)
                _jpeg(base / "images" / f"{image_id}.jpg", colour, (30 + k, 20 + 2 * k))
                lines.append(f"{image_id} {label + 1} {species} {label + 1}\n")
                if split == "trainval":
                    trainval.append((label, colour))
        (base / "annotations" / f"{split}.txt").write_text("".join(lines))
    return trainval


def fake_flowers(root: Path, labels: list[int], split_ids: dict[str, list[int]]) -> None:
    """flowers-102/jpg/image_NNNNN.jpg, imagelabels.mat (1-based labels) and setid.mat
    (trnid, valid, tstid), read by torchvision through scipy.io."""
    from scipy.io import savemat

    base = root / "flowers-102"
    for image_id, _ in enumerate(labels, 1):
        _jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", _colour(image_id % 9),
              (50, 40 + image_id))
    savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(base / "setid.mat", {"trnid": np.array([split_ids["train"]]),
                                 "valid": np.array([split_ids["val"]]),
                                 "tstid": np.array([split_ids["test"]])})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The harness's cache in a temporary folder; load_dataset's memo cleared around it."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    data.load_dataset.cache_clear()
    yield tmp_path / "torchvision"
    data.load_dataset.cache_clear()


# ---------------------------------------------------------------------- data sets


def test_oxford_pets_loads_its_splits_resized_with_breed_names(tmp_path):
    trainval = fake_pets(tmp_path, {"trainval": 4, "test": 2})
    d = data.load_oxford_pets(tmp_path, download=False)
    assert d.name == "oxford-pets" and d.classes == ("Abyssinian", "American Bulldog", "Bengal")
    side = STUDY_LOAD_SIZE
    assert d.train_x.shape == (12, 3, side, side) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (6, 3, side, side)
    assert d.train_y.tolist() == [label for label, _ in trainval]
    assert d.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    for x, (_, colour) in zip(d.train_x, trainval):  # each image's colour, resized
        assert (x.float().mean(dim=(1, 2)) - torch.tensor(colour)).abs().max() < 3
    assert (tmp_path / "oxford-iiit-pet" / f"bench-{side}px.pt").exists()
    again = data.load_oxford_pets(tmp_path, download=False)  # from the cache file
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)


def test_flowers_102_trains_on_its_train_split_and_tests_on_its_test_split(tmp_path):
    labels = [1, 1, 2, 2, 3, 3, 1, 2, 3, 102]
    fake_flowers(tmp_path, labels, {"train": [1, 3, 5], "val": [2, 4, 6],
                                    "test": [7, 8, 9, 10]})
    d = data.load_flowers102(tmp_path, download=False)
    assert d.num_classes == 102 and d.classes[0] == "pink primrose"
    assert d.train_x.shape == (3, 3, STUDY_LOAD_SIZE, STUDY_LOAD_SIZE)
    assert d.train_y.tolist() == [0, 1, 2] and d.test_y.tolist() == [0, 1, 2, 101]
    colour = torch.tensor(_colour(7 % 9), dtype=torch.float32)
    assert (d.test_x[0].float().mean(dim=(1, 2)) - colour).abs().max() < 3


@pytest.mark.parametrize("load, folder", [(data.load_oxford_pets, "oxford-iiit-pet"),
                                          (data.load_flowers102, "flowers-102")])
def test_a_missing_data_set_without_download_is_one_line_naming_where_it_goes(tmp_path, load,
                                                                              folder):
    with pytest.raises(BenchError) as err:
        load(tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message and "not found" in message
    assert folder in message and str(tmp_path) in message


def test_both_data_sets_are_registered_for_users_with_internet(cache):
    for name in ("oxford-pets", "flowers-102"):
        info = data.dataset_info(name)
        assert not info.offline and "internet" in info.description
    fake_pets(cache, {"trainval": 3, "test": 1})  # present: the registry's loader finds it
    assert data.load_dataset("oxford-pets").train_x.shape[0] == 9


# ------------------------------------------------------------------ preprocessing


def test_study_statistics_are_the_average_of_per_image_means_and_stds():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (7, 3, 9, 11), dtype=torch.uint8)
    mean, std = study_statistics(x, chunk=3)
    scaled = x.double() / 255  # the study: ToTensor, then utils.get_mean_and_std
    assert np.allclose(mean, scaled.mean(dim=(2, 3)).mean(dim=0) * 255)
    assert np.allclose(std, scaled.std(dim=(2, 3)).mean(dim=0) * 255)


def test_study_pipeline_crops_and_flips_in_training_and_takes_the_centre_in_evaluation():
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)
    pre = StudyPreprocess(mean, std, resize=12, crop=8)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8)
    normalised = (x.float() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1)
    module = torch.nn.Identity()
    module.train()
    out = pre(module, (x,))[0]
    assert out.shape == (64, 3, 8, 8)
    flips = []
    for image, source in zip(out, normalised):
        crops = {(t, l, flip) for t, l in itertools.product(range(5), range(5))
                 for flip in (False, True)
                 if torch.allclose(source[:, t:t + 8, l:l + 8].flip(-1) if flip
                                   else source[:, t:t + 8, l:l + 8], image)}
        assert crops, "each training image is a crop of its normalised source"
        flips.append(next(iter(crops))[2])
    assert 0 < sum(flips) < len(flips)  # both flipped and unflipped images occur
    module.eval()
    assert torch.allclose(pre(module, (x,))[0], normalised[:, :, 2:10, 2:10])


def test_study_pipeline_resizes_small_images_first():
    x = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    module = torch.nn.Identity().eval()
    out = StudyPreprocess((100.0,) * 3, (50.0,) * 3, resize=16, crop=14)(module, (x,))[0]
    assert out.shape == (2, 3, 14, 14) and torch.allclose(out, torch.zeros_like(out))


def test_a_study_task_keeps_uint8_images_and_its_network_runs_the_pipeline(cache):
    fake_pets(cache, {"trainval": 4, "test": 2})
    task = Task("oxford-pets", 9, "efficientnet-lite0", image_size=32, preprocess="study")
    loaded = task.load(seed=0)
    x, _ = loaded.train
    assert x.dtype == torch.uint8 and x.shape == (9, 3, STUDY_LOAD_SIZE, STUDY_LOAD_SIZE)
    assert loaded.test[0].dtype == torch.uint8
    net = loaded.network()
    net.model.eval()
    with torch.no_grad():
        hooked = net.model(x[:2])
        pre = task.study_preprocess(x)
        assert (pre.resize, pre.crop) == (37, 32)  # 256/224 of the crop, as the study's
        handles = list(net.model._forward_pre_hooks)
        del net.model._forward_pre_hooks[handles[0]]
        direct = net.model(pre(net.model, (x[:2],))[0])
    assert hooked.shape == (2, 3) and torch.allclose(hooked, direct)
    default = Task("oxford-pets", 9, "efficientnet-lite0", image_size=32)
    assert default.preprocess == "resize"
    assert default.load(seed=0).train[0].dtype == torch.float32


def _study_methods():
    from baselines import GridSearch
    from methods._de_elbo import DEELBo
    from methods._laplace import LaplaceMarglik
    from methods._ntk import NTKMarglik

    return [GridSearch(), DEELBo(lrs=(0.01,)),
            LaplaceMarglik(lrs=(0.01,), schedule="online", burnin_epochs=0, every_epochs=1,
                           hyper_steps=2, fit_batch_size=4),
            NTKMarglik(lrs=(0.01,), hyper_steps=2, subset_size=4)]


@pytest.mark.parametrize("method", _study_methods(), ids=lambda m: m.name)
def test_the_suites_methods_run_on_a_study_preprocessed_task(cache, method):
    """Search trials, retrains, DE-ELBo's sampled passes, Laplace fits (online, every
    epoch) and NTK Jacobians all take the uint8 images through the network's pipeline."""
    import time

    from bench.contract import schema as S
    from bench.contract.space import Param
    from bench.driver.campaign import Campaign, run_inline
    from bench.driver.budget import Budget

    fake_pets(cache, {"trainval": 4, "test": 2})
    one = [Param(name, 0.01, 0.01, (0.01,)) for name in ("lr", "alpha", "beta")]
    task = Task("oxford-pets", 12, "efficientnet-lite0", image_size=32, steps=4, batch_size=4,
                preprocess="study", space=tuple(one))
    campaign = Campaign("study", task, method.name, method, seed=0,
                        budget=Budget(workers=1, cap_s=1e6), clock0=time.perf_counter())
    run_inline(campaign)
    assert [row[S.STATUS] for row in campaign.rows] == [S.OK] * len(campaign.rows)
    scored = [row for row in campaign.rows if row.get(S.TEST_ACC) is not None]
    assert len(scored) == 1 and 0 <= scored[0][S.TEST_ACC] <= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"preprocess": "imagenet"}, "preprocess must be one of"),
    ({"preprocess": "study", "trainable_blocks": 2}, "cannot take trainable_blocks"),
])
def test_bad_preprocess_options_are_refused(kwargs, message):
    with pytest.raises(BenchError, match=message):
        Task("animal-mnist", 100, "efficientnet-lite0", image_size=32, **kwargs)


def test_study_preprocess_on_grey_images_is_refused_with_the_channels():
    task = Task("digits", 60, "efficientnet-lite0", image_size=32, preprocess="study")
    with pytest.raises(BenchError, match="digits has 1, efficientnet-lite0 takes 3"):
        task.check_data()


# ---------------------------------------------------------------------- backbones


@pytest.mark.parametrize("name, head, free", [
    ("resnet50", "fc", ("conv1.", "bn1.")),
    ("vit-b16", "heads.head", ("conv_proj.", "class_token", "encoder.pos_embedding")),
    ("convnext-tiny", "classifier.2", ("features.0.",))])
def test_study_backbones_have_a_new_head_and_every_parameter_grouped(name, head, free):
    net = backbones.STUDY_BACKBONES[name].network(7, pretrained=False)
    linears = [n for n, m in net.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert net.head == head == linears[-1]
    assert net.model.get_submodule(head).out_features == 7
    names = [n for n, _ in net.model.named_parameters()]
    assert [n for n, _ in net.head_parameters()] == [f"{head}.weight", f"{head}.bias"]
    # layer-wise constraints' stages: the stem (or embedding) free, the rest 0 .. 2
    assert set(net.stage_of) == {n for n, _ in net.backbone_parameters()
                                 if not n.startswith(free)}
    order = [net.stage_of[n] for n in names if n in net.stage_of]
    assert order == sorted(order) and set(order) == ({0} if name == "vit-b16" else {0, 1, 2})
    assert set(net.mu0) == {n for n, _ in net.backbone_parameters()}
    with torch.no_grad():
        assert net.model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 7)


def test_vit_b16_takes_224_px_only():
    assert backbones.backbone_info("vit-b16").default_size == 224
    with pytest.raises(BenchError, match="vit-b16 needs image_size <= 224"):
        Task("cifar10", 100, "vit-b16", image_size=256)


def test_weights_that_cannot_be_loaded_are_one_line_naming_them_and_their_source(
        tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # a broken file: no download is tried
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / Path(weights.url).name).write_bytes(b"not a state dict")
    with pytest.raises(BenchError) as err:
        backbones.build_backbone("resnet50", 10)
    message = str(err.value)
    assert "\n" not in message and "ResNet50_Weights.IMAGENET1K_V1" in message
    assert weights.url in message and str(checkpoints) in message


# ------------------------------------------------------------------------- suite


def test_study_gpu_suite_parses_with_the_studys_tasks_grid_and_methods():
    from bench.driver.suite import parse_suite
    from bench.records.published import published_runs

    path = ROOT / "suites" / "study-gpu.toml"
    suite = parse_suite(path.read_text(), str(path))
    assert suite.budget.unit == "gpu" and suite.budget.gpus_per_worker == 1
    assert suite.seeds == (1001, 2001, 3001)
    assert {(t.dataset, t.backbone) for t in suite.tasks} == set(itertools.product(
        ("cifar10", "oxford-pets", "flowers-102"), ("resnet50", "vit-b16", "convnext-tiny")))
    for task in suite.tasks:
        assert (task.preprocess, task.image_size, task.steps) == ("study", 224, 6000)
        assert task.batch_size == min(128, task.n)
        grid = [p.grid for p in task.search_space()]
        assert [p.name for p in task.search_space()] == ["lr", "alpha", "beta"]
        assert len(list(itertools.product(*grid))) == 144
        record_set, n = task.name.rsplit("-N", 1)
        recorded = published_runs(record_set)
        assert task.name in set(recorded["task"]) and int(n) == task.n
    methods = {m.label: dict(m.options) for m in suite.methods}
    assert set(methods) == {"grid", "de-elbo", "laplace-marglik", "ntk-marglik"}
    laplace = methods["laplace-marglik"]
    assert (laplace["schedule"], laplace["every_epochs"], laplace["hyper_steps"]) == (
        "online", 1, 100)
