"""Evaluation metrics: class-balanced accuracy and negative log-likelihood."""

import torch
import torch.nn.functional as F


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the per-class recall."""
    pred = logits.argmax(dim=1)
    recalls = [
        (pred[labels == c] == c).float().mean() for c in torch.unique(labels)
    ]
    return float(torch.stack(recalls).mean())


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits)."""
    return float(F.cross_entropy(logits, labels))


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{"acc": balanced accuracy, "nll": mean NLL}`` of ``model`` on ``(x, y)``."""
    logits = predict(model, x)
    return {"acc": balanced_accuracy(logits, y), "nll": nll(logits, y)}
