"""trainable_blocks: fine-tuning the top of EfficientNet-Lite0 on cached prefix outputs."""

import contextlib
import io

import pytest
import torch

from bench.contract.errors import BenchError
from bench.zoo.backbones import backbone_info, build_backbone
from bench.zoo.task import Task


def _net(seed=0):
    with contextlib.redirect_stdout(io.StringIO()):
        return build_backbone("efficientnet-lite0", 10, seed)


@pytest.mark.parametrize("k", [0, 2, 16])
def test_prefix_then_top_computes_the_whole_network(k):
    net = _net()
    net.model.eval()
    bottom, top = backbone_info("efficientnet-lite0").split(net, k)
    top.model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(top.model(bottom(x)), net.model(x), atol=1e-5)
    # only the top trains; the prefix is frozen; mu0 and stages follow the original names
    assert not any(p.requires_grad for p in bottom.parameters())
    backbone = [n for n, _ in top.backbone_parameters()]
    assert set(top.mu0) == set(backbone)
    # layer-wise stages: the whole network's, the stem's block 0 (stride 2) free
    free = {n for n in backbone if n.startswith("_blocks.0.")} if k == 16 else set()
    assert set(top.stage_of) == set(backbone) - free
    assert top.head == "_fc" and [n for n, _ in top.head_parameters()] == ["_fc.weight", "_fc.bias"]
    if k == 2:  # the renumbered first trainable block is the original block 14
        assert torch.equal(top.mu0["_blocks.0._depthwise_conv.weight"],
                           net.mu0["_blocks.14._depthwise_conv.weight"])
        assert top.stage_of["_blocks.0._depthwise_conv.weight"] == \
            net.stage_of["_blocks.14._depthwise_conv.weight"]


def test_a_task_with_trainable_blocks_caches_features_and_trains_the_top():
    task = Task(dataset="digits", n=50, backbone="efficientnet-lite0", image_size=32,
                trainable_blocks=1, test_limit=40)
    assert task.name.endswith("-top1")
    data = task.load(0)
    assert data.train[0].shape == (50, 192, 1, 1) and data.test[0].shape == (40, 192, 1, 1)
    net = data.network()
    # the same seed's whole network gives the same logits from the images
    whole = Task(dataset="digits", n=50, backbone="efficientnet-lite0", image_size=32,
                 test_limit=40).load(0)
    full = whole.network()
    net.model.eval(), full.model.eval()
    with torch.no_grad():
        assert torch.allclose(net.model(data.test[0]), full.model(whole.test[0]), atol=1e-4)
    net.model.train()
    assert net.model(data.train[0][:4]).shape == (4, 10)


@pytest.mark.parametrize("fields, message", [
    ({"backbone": "small-cnn", "trainable_blocks": 1}, "cannot be split"),
    ({"trainable_blocks": -1}, "trainable_blocks must be an integer >= 0"),
    ({"trainable_blocks": 17}, "must be <= 16"),
    ({"trainable_blocks": 1.5}, "trainable_blocks must be an integer"),
])
def test_bad_trainable_blocks_are_refused(fields, message):
    spec = {"dataset": "digits", "n": 50, "backbone": "efficientnet-lite0"} | fields
    with pytest.raises(BenchError, match=message):
        Task(**spec)
