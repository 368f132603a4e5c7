import numpy as np
import pytest
import torch

from bench.contract.errors import BenchError
from bench.zoo import data
from bench.zoo.data import load_dataset, prepare_images, stratified_indices, stratified_split
from bench.zoo.task import Task


@pytest.mark.parametrize("name, size, train, test", [
    ("animal-mnist", 28, 7773, 1943),
    ("mnist-5k", 28, 4000, 1000),
    ("fashion-mnist", 28, 60000, 10000),
    ("digits", 8, 1438, 359),
])
def test_offline_datasets_load_with_shapes_and_classes(name, size, train, test):
    d = load_dataset(name)
    assert d.train_x.shape == (train, 1, size, size) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (test, 1, size, size)
    assert d.num_classes == 10 and d.channels == 1
    assert set(d.train_y.unique().tolist()) == set(range(10)) == set(d.test_y.unique().tolist())
    assert d.licence
    assert d.train_x.float().std() > 10  # real pixels, not a blank array


def test_animal_mnist_has_no_image_in_both_train_and_test():
    d = load_dataset("animal-mnist")
    train = {bytes(x.numpy().tobytes()) for x in d.train_x}
    assert not any(bytes(x.numpy().tobytes()) in train for x in d.test_x)


def test_a_tasks_n_examples_are_a_stratified_deterministic_subsample():
    d = load_dataset("mnist-5k")  # 400 per class in the training pool
    data = Task("mnist-5k", 100, "small-cnn", image_size=28).load(seed=3)
    x, y = data.train
    assert x.shape == (100, 1, 28, 28)
    assert torch.equal(y, d.train_y[stratified_indices(d.train_y, 100, seed=3)])
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    d = load_dataset("animal-mnist")  # classes uneven after de-duplication
    y = d.train_y[stratified_indices(d.train_y, 100, seed=3)]
    expected = torch.bincount(d.train_y).double() / len(d.train_y) * 100
    assert ((torch.bincount(y, minlength=10) - expected).abs() < 1).all()
    assert torch.equal(stratified_indices(d.train_y, 100, seed=3),
                       stratified_indices(d.train_y, 100, seed=3))
    other = stratified_indices(d.train_y, 100, seed=4)
    assert not torch.equal(stratified_indices(d.train_y, 100, seed=3), other)


def test_uneven_counts_are_allocated_by_largest_remainder():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(y, 9, seed=0)
    assert torch.bincount(y[idx]).tolist() == [5, 3, 1] or torch.bincount(y[idx]).tolist() == [4, 3, 2]
    assert len(set(idx.tolist())) == 9


def test_stratified_split_is_disjoint_and_80_20():
    y = torch.arange(100) % 10
    tr, va = stratified_split(y, 0.2, seed=1)
    assert len(va) == 20 and len(tr) == 80
    assert not set(tr.tolist()) & set(va.tolist())
    assert torch.bincount(y[va]).tolist() == [2] * 10


def test_n_larger_than_pool_is_refused():
    with pytest.raises(BenchError, match="out of range"):
        stratified_indices(torch.arange(10) % 2, 11, seed=0)


def test_prepare_images_resizes_repeats_channels_and_normalises():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = prepare_images(x, 32, 3, (127.0,), (128.0,))
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 1.0))


def test_unknown_dataset_is_a_one_line_error():
    with pytest.raises(BenchError, match="unknown data set 'nope'"):
        data.dataset_info("nope")


def test_missing_debian_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    with pytest.raises(BenchError, match="apt-get install no-such-dataset-package"):
        data._debian_file("no-such-dataset-package", "/usr/share/datasets/none/x.gz")


def test_animal_mnist_is_read_from_a_pip_downloaded_wheel_when_not_installed(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    raw = data._package_file("animal_mnist", "data/Animal_MNIST/animal_label_version_3.gz",
                             "animal-mnist", "0.4")
    labels = np.asarray(data.pickle.loads(data.gzip.decompress(raw)))
    assert labels.shape == (10000,)
