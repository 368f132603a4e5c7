import numpy as np
import pytest
import torch

from bench.contract.errors import BenchError
from bench.zoo.backbones import build_backbone
from bench.zoo.regularizers import (L2SP, LayerwiseConstraint, MarsSP, MarsSPFrobenius,
                                    WeightDecay, make_regularizer)


def test_weight_decay_penalty_by_hand(tiny_net):
    by_hand = 0.5 * 1e-2 * sum(float((p.detach() ** 2).sum()) for p in tiny_net.model.parameters())
    assert float(WeightDecay(beta=1e-2).penalty(tiny_net).detach()) == pytest.approx(by_hand, rel=1e-6)
    assert WeightDecay(beta=0.0).penalty(tiny_net) is None


@torch.no_grad()
def test_l2sp_penalty_by_hand(tiny_net):
    m = tiny_net.model
    bb = sum(float(((p - tiny_net.mu0[n]) ** 2).sum()) for n, p in
             [("0.weight", m[0].weight), ("0.bias", m[0].bias)])
    head = float((m[1].weight ** 2).sum() + (m[1].bias ** 2).sum())
    assert bb > 0.1
    value = float(L2SP(alpha=0.3, beta=0.7).penalty(tiny_net).detach())
    assert value == pytest.approx(0.5 * 0.3 * bb + 0.5 * 0.7 * head, rel=1e-6)


def test_l2sp_penalty_is_zero_at_the_pretrained_weights(tiny_net):
    with torch.no_grad():
        for n, p in tiny_net.backbone_parameters():
            p.copy_(tiny_net.mu0[n])
    assert float(L2SP(alpha=1.0, beta=0.0).penalty(tiny_net).detach()) == 0.0


def test_mars_sp_projection_bounds_every_row_l1_distance(tiny_net):
    w_before = tiny_net.model[0].weight.detach().clone()
    with torch.no_grad():
        MarsSP(lambda_bb=0.5, lambda_head=0.2).project(tiny_net)
    d = tiny_net.model[0].weight - tiny_net.mu0["0.weight"]
    assert (d.abs().sum(dim=1) <= 0.5 + 1e-5).all()
    assert (tiny_net.model[1].weight.abs().sum(dim=1) <= 0.2 + 1e-5).all()
    # rows are only shrunk toward mu0, never rotated
    before = w_before - tiny_net.mu0["0.weight"]
    cos = torch.nn.functional.cosine_similarity(d, before, dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_mars_sp_leaves_rows_inside_the_ball_alone(tiny_net):
    w_before = tiny_net.model[0].weight.detach().clone()
    with torch.no_grad():
        MarsSP(lambda_bb=1e6, lambda_head=1e6).project(tiny_net)
    assert torch.equal(tiny_net.model[0].weight, w_before)


@torch.no_grad()
def test_mars_sp_frobenius_bounds_each_layer(tiny_net):
    with torch.no_grad():
        MarsSPFrobenius(lambda_bb=0.3, lambda_head=0.1).project(tiny_net)
    assert float((tiny_net.model[0].weight - tiny_net.mu0["0.weight"]).norm()) <= 0.3 + 1e-5
    assert float(tiny_net.model[1].weight.norm()) <= 0.1 + 1e-5


@torch.no_grad()
def test_layerwise_radius_grows_with_depth_on_a_real_backbone():
    net = build_backbone("efficientnet-lite0", 10, seed=0)
    params = dict(net.model.named_parameters())
    with torch.no_grad():
        for name in net.layer_weights:
            params[name].add_(torch.randn_like(params[name]))
        reg = LayerwiseConstraint(D=0.01, scale=2.0, D_head=0.5)
        reg.project(net)
    stages = set()
    for name in net.layer_weights:
        w = params[name]
        if net.is_head(name):
            assert float(w.norm()) <= 0.5 + 1e-4
        elif name in net.stage_of:
            radius = 0.01 * 2.0 ** net.stage_of[name]
            stages.add(net.stage_of[name])
            assert float((w - net.mu0[name]).norm()) <= radius * (1 + 1e-4)
        else:  # the stem: free, as a ResNet's
            assert float((w - net.mu0[name]).norm()) > 1.0
    assert stages == {0, 1, 2}  # strides 4-8, 16, 32
    # the stem's BatchNorm is free; biases are never constrained (no BN moved here)
    assert float((params["_bn0.weight"] - net.mu0["_bn0.weight"]).abs().max()) == 0.0


def test_mars_sp_constraint_holds_on_a_real_backbone_after_a_step():
    net = build_backbone("efficientnet-lite0", 10, seed=0)
    x = torch.randn(4, 3, 32, 32)
    loss = net.model(x).logsumexp(1).sum()
    loss.backward()
    with torch.no_grad():
        for p in net.model.parameters():
            p.add_(p.grad, alpha=-10.0)  # a big step
        MarsSP(lambda_bb=2.0, lambda_head=1.0).project(net)
    params = dict(net.model.named_parameters())
    for name in net.layer_weights:
        centre = 0 if net.is_head(name) else net.mu0[name]
        d = (params[name] - centre).reshape(params[name].shape[0], -1)
        assert (d.abs().sum(1) <= (1.0 if net.is_head(name) else 2.0) + 1e-4).all(), name


def test_make_regularizer_refuses_unknown_names_and_bad_values():
    assert make_regularizer("l2sp", alpha=1e-3).alpha == 1e-3
    with pytest.raises(BenchError, match="unknown regularizer 'l3sp'"):
        make_regularizer("l3sp")
    with pytest.raises(BenchError, match="no hyperparameter gamma"):
        make_regularizer("l2sp", gamma=1.0)
    with pytest.raises(BenchError, match="finite number"):
        make_regularizer("wd", beta=-1.0)


# -- MARS-SP against the authors' code (henrygouk/mars-finetuning, lipschitz.py), ported to
# NumPy line by line in Keras' layouts: a conv kernel is (kh, kw, in, out), a dense one
# (in, out); LInfLipschitzConstraint sums |t| over every axis but the last, FrobeniusConstraint
# over all, BatchNormLipschitzConstraint clips gamma / sqrt(var + 1e-6) around its start.

def _authors_linf(w, zero, max_k):
    t = w - zero
    axes = (0, 1, 2) if w.ndim == 4 else 0
    norms = np.abs(t).sum(axis=axes, keepdims=True)
    return zero + t * (1.0 / np.maximum(1.0, norms / max_k))


def _authors_frob(w, zero, max_k):
    t = w - zero
    return zero + t * (1.0 / np.maximum(1.0, np.sqrt((t ** 2).sum()) / max_k))


def _authors_bn(gamma, var, gamma0, var0, max_k):
    diag, zero_diag = gamma / np.sqrt(var + 1e-6), gamma0 / np.sqrt(var0 + 1e-6)
    t = diag - zero_diag
    v = t * (1.0 / np.maximum(1.0, np.abs(t) / max_k))
    return (v + zero_diag) * np.sqrt(var + 1e-6)


def _bn_net():
    """conv -> BatchNorm -> pool -> linear head, moved away from its start (BatchNorm's
    running variance too, as training moves it)."""
    from torch import nn

    from bench.zoo.network import Network

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 4)).double()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    net = Network(model, head="4", stage_of={})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model[1].running_var.mul_(torch.empty(6, dtype=torch.float64).uniform_(0.5, 2.0))
    return net


@pytest.mark.parametrize("cls, authors", [(MarsSP, _authors_linf), (MarsSPFrobenius, _authors_frob)])
def test_mars_sp_equals_the_authors_formulas_batchnorm_included(cls, authors):
    net = _bn_net()
    m = net.model
    keras = lambda t: t.detach().numpy().transpose(2, 3, 1, 0) if t.ndim == 4 else \
        t.detach().numpy().T  # noqa: E731 - torch (out, in, ...) to Keras (..., in, out)
    conv, conv0, head = keras(m[0].weight), keras(net.mu0["0.weight"]), keras(m[4].weight)
    gamma, var = m[1].weight.detach().numpy(), m[1].running_var.numpy()
    gamma0, var0 = net.mu0["1.weight"].numpy(), net.running_var0["1.weight"].numpy()
    lam_bb, lam_head = 0.7, 0.3
    with torch.no_grad():
        cls(lambda_bb=lam_bb, lambda_head=lam_head).project(net)
    np.testing.assert_allclose(keras(m[0].weight), authors(conv, conv0, lam_bb), rtol=0,
                               atol=1e-14)
    np.testing.assert_allclose(keras(m[4].weight), authors(head, 0 * head, lam_head), rtol=0,
                               atol=1e-14)
    np.testing.assert_allclose(m[1].weight.detach().numpy(),
                               _authors_bn(gamma, var, gamma0, var0, lam_bb), rtol=0, atol=1e-14)
    gain = m[1].weight.detach() / (m[1].running_var + 1e-6).sqrt()
    gain0 = net.mu0["1.weight"] / (net.running_var0["1.weight"] + 1e-6).sqrt()
    assert float((gain - gain0).abs().max()) <= lam_bb + 1e-12
    assert float((gain - gain0).abs().max()) == pytest.approx(lam_bb)  # it binds here


def test_mars_sp_at_radius_zero_is_the_centre_exactly():
    net = _bn_net()
    with torch.no_grad():
        MarsSP(lambda_bb=0.0, lambda_head=0.0).project(net)
    m = net.model
    assert torch.equal(m[0].weight, net.mu0["0.weight"])
    assert torch.equal(m[4].weight, torch.zeros_like(m[4].weight))
    assert all(torch.isfinite(p).all() for p in m.parameters())
    gain = m[1].weight.detach() / (m[1].running_var + 1e-6).sqrt()
    gain0 = net.mu0["1.weight"] / (net.running_var0["1.weight"] + 1e-6).sqrt()
    torch.testing.assert_close(gain, gain0, rtol=0, atol=1e-14)


# -- layer-wise constraints: the authors' radius map and BatchNorm clipping (issue 28)

def _radii(net, reg):
    return {n: reg.radius(net, n) for n in net.layer_weights if not net.is_head(n)}


def test_layerwise_radii_on_a_torchvision_resnet18_are_the_authors():
    """Li & Zhang's constraint_trainer.py: stem free, layer1 .. layer4 = D, D, D·g, D·g²."""
    import torchvision

    from bench.zoo import backbones
    from bench.zoo.network import Network

    model = torchvision.models.resnet18(weights=None)
    head = backbones._replace_last_linear(model, 5)
    net = Network(model, head=head, stage_of=backbones._stages(model, head,
                                                               backbones._resnet_stage))
    reg = LayerwiseConstraint(D=2.0, scale=3.0, D_head=1.0)
    expected = {"conv1": None, "layer1": 2.0, "layer2": 2.0, "layer3": 6.0, "layer4": 18.0}
    radii = _radii(net, reg)
    assert {n.split(".")[0] for n in radii} == set(expected)
    for name, radius in radii.items():
        assert radius == expected[name.split(".")[0]], name
    assert reg.radius(net, "bn1.weight") is None and reg.radius(net, "layer3.0.bn1.weight") == 6.0


def test_layerwise_radii_on_efficientnet_lite0_follow_the_output_stride():
    net = build_backbone("efficientnet-lite0", 5)
    reg = LayerwiseConstraint(D=1.0, scale=2.0)
    radii = _radii(net, reg)
    block = lambda n: int(n.split(".")[1]) if n.startswith("_blocks.") else None  # noqa: E731
    for name, radius in radii.items():
        b = block(name)
        if name.startswith("_conv_stem") or b == 0:
            assert radius is None, name  # stride 2: free, as a ResNet's stem
        elif b is not None and b <= 4:
            assert radius == 1.0, name  # strides 4 and 8: D
        elif b is not None and b <= 10:
            assert radius == 2.0, name  # stride 16: D·g
        else:
            assert radius == 4.0, name  # stride 32 (blocks 11-15, the head conv): D·g²


def test_layerwise_projection_bounds_each_layer_and_clips_batchnorm_gains():
    net = _bn_net()  # conv (stage 0) -> BatchNorm (stage 0) -> linear head
    net.stage_of.update({"0.weight": 0, "1.weight": 0})
    m = net.model
    stem_free = net.mu0["0.bias"].clone()
    with torch.no_grad():
        LayerwiseConstraint(D=0.4, scale=2.0, D_head=0.2).project(net)
        assert float((m[0].weight - net.mu0["0.weight"]).norm()) == pytest.approx(0.4)
        assert float(m[4].weight.norm()) == pytest.approx(0.2)
        gain = m[1].weight / (m[1].running_var + 1e-6).sqrt()
        gain0 = net.mu0["1.weight"] / (net.running_var0["1.weight"] + 1e-6).sqrt()
        assert float((gain - gain0).abs().max()) == pytest.approx(0.4)  # clipped, binding
        np.testing.assert_allclose(
            m[1].weight.numpy(), _authors_bn(gamma := m[1].weight.numpy(),
                                             m[1].running_var.numpy(),
                                             net.mu0["1.weight"].numpy(),
                                             net.running_var0["1.weight"].numpy(), 0.4),
            atol=1e-14)  # already projected: the authors' formula leaves it as it is
    assert not torch.equal(m[0].bias, stem_free)  # biases are never constrained
    del gamma


def test_mars_sp_keras_treats_a_depthwise_kernel_as_one_row_as_the_authors_do():
    """Keras' DepthwiseConv2D is a Conv2D: the authors' LInfLipschitzConstraint sums |t| of a
    (kh, kw, C, 1) kernel over axes (0, 1, 2), one norm for all C channels; `mars-sp` keeps
    a row per channel (the layer's operator norm), `mars-sp-keras` the authors' form."""
    from torch import nn

    from bench.zoo.network import Network
    from bench.zoo.regularizers import MarsSPKeras

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1)).double()
    nets = []
    for cls in (MarsSP, MarsSPKeras):
        torch.manual_seed(1)
        net = Network(_copy(model), head="1", stage_of={})  # each from the same start
        with torch.no_grad():
            net.model[0].weight.add_(torch.randn_like(net.model[0].weight))
        keras = net.model[0].weight.detach().numpy().transpose(2, 3, 0, 1)  # (kh, kw, C, 1)
        keras0 = net.mu0["0.weight"].numpy().transpose(2, 3, 0, 1)
        with torch.no_grad():
            cls(lambda_bb=0.5, lambda_head=1e6).project(net)
        nets.append((net, keras, keras0))
    assert nets[1][0].depthwise_weights == ("0.weight",)
    per_channel = nets[0][0].model[0].weight - nets[0][0].mu0["0.weight"]
    assert float(per_channel.abs().sum(dim=(1, 2, 3)).max()) == pytest.approx(0.5)
    net, keras, keras0 = nets[1]
    np.testing.assert_allclose(net.model[0].weight.detach().numpy().transpose(2, 3, 0, 1),
                               _authors_linf(keras, keras0, 0.5), rtol=0, atol=1e-14)
    assert float((net.model[0].weight - net.mu0["0.weight"]).abs().sum()) == pytest.approx(0.5)


def _copy(model):
    import copy

    return copy.deepcopy(model)
