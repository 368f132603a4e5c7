import pytest
import torch

from bench.training.metrics import balanced_accuracy, predict
from bench.training.train import TrainConfig, TrainingDiverged, fine_tune
from bench.zoo.regularizers import L2SP, Regularizer
from bench.zoo.task import Task


def _small_task(**kw):
    return Task(**{"dataset": "mnist-5k", "n": 200, "backbone": "small-cnn",
                   "test_limit": 500, **kw})


def test_balanced_accuracy_weights_classes_equally():
    logits = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]])
    labels = torch.tensor([0, 0, 0, 1])
    assert balanced_accuracy(logits, labels) == 1.0
    assert balanced_accuracy(logits, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_training_is_deterministic_for_a_seed_and_differs_across_seeds():
    def run(seed):
        data = _small_task().load(seed)
        net = data.network()
        result = fine_tune(net, L2SP(alpha=1e-3, beta=1e-3), data.train,
                           TrainConfig(lr=0.05, steps=15, seed=seed), {"test": data.test})
        return result, torch.cat([p.flatten() for p in net.model.parameters()])

    (a, wa), (b, wb), (c, wc) = run(1), run(1), run(2)
    assert torch.equal(wa, wb) and a.metrics == b.metrics
    assert not torch.equal(wa, wc)


def test_reports_reach_the_callback_which_can_stop_training():
    data = _small_task().load(0)
    seen = []

    def stop_at_second(report):
        seen.append(report)
        return len(seen) == 2

    result = fine_tune(data.network(), Regularizer(), data.train,
                       TrainConfig(lr=0.05, steps=20, report_every=5), {"val": data.test},
                       stop_at_second)
    assert [r.step for r in seen] == [5, 10]
    assert result.stopped_early and result.steps_done == 10
    assert set(seen[0].metrics["val"]) == {"acc", "nll"}
    assert result.train_s > 0 and result.eval_s > 0
    assert result.wall_s >= result.train_s + result.eval_s


def test_short_fine_tune_of_the_pretrained_small_cnn_beats_chance_by_far():
    data = _small_task(n=500).load(0)
    net = data.network()
    result = fine_tune(net, L2SP(alpha=1e-4, beta=1e-4), data.train,
                       TrainConfig(lr=0.05, steps=80), {"test": data.test})
    assert result.metrics["test"]["acc"] > 0.7  # chance: 0.1


def test_efficientnet_lite0_weights_are_the_real_imagenet_ones():
    """A linear probe on frozen features: real ImageNet features separate Animal-MNIST's
    silhouettes far above chance; the same architecture with random weights does not."""
    from efficientnet_lite_pytorch import EfficientNet

    task = Task("animal-mnist", 400, "efficientnet-lite0", image_size=32, test_limit=400)
    data = task.load(0)

    def probe(model) -> float:
        model._fc = torch.nn.Identity()
        feats_tr, feats_te = predict(model, data.train[0]), predict(model, data.test[0])
        head = torch.nn.Linear(feats_tr.shape[1], 10)
        opt = torch.optim.LBFGS(head.parameters(), max_iter=200)
        mean, std = feats_tr.mean(0), feats_tr.std(0) + 1e-6

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(head((feats_tr - mean) / std), data.train[1])
            loss = loss + 1e-3 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return balanced_accuracy(head((feats_te - mean) / std).detach(), data.test[1])

    pretrained = probe(data.network().model)
    torch.manual_seed(0)
    random_init = probe(EfficientNet.from_name("efficientnet-lite0", num_classes=10))
    assert pretrained > 0.6, pretrained
    assert pretrained > random_init + 0.15, (pretrained, random_init)


def test_a_diverging_run_raises():
    data = _small_task().load(0)
    with pytest.raises(TrainingDiverged):
        fine_tune(data.network(), Regularizer(), data.train,
                  TrainConfig(lr=1e30, steps=20, clip_norm=None))
