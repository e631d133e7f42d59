"""Representation quality: linear probe and kNN accuracy on frozen features.

Features come from ``method.encode`` in eval mode, extracted once per split without
augmentation and standardised with the statistics of the probe's fitting split.

- Linear probe: multinomial logistic regression fitted by full-batch L-BFGS in float64 (torch),
  with scikit-learn's objective C * sum(cross-entropy) + ||W||^2 / 2, so C means what it
  means there. C is picked from the protocol's grid by accuracy on a validation split carved
  from train with a fixed seed; the probe is then refit on the whole train split and scored
  once on test.
- kNN: cosine similarity, k neighbours voting with weights exp(sim / T) (Wu et al. 2018,
  the protocol of InstDisc / MoCo / DINO).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from bench.data import validation_split
from bench.errors import GenbenchError
from bench.protocol import EvalSettings


@torch.no_grad()
def encode_features(method: Any, images: Tensor) -> Tensor:
    """(n, C, H, W) images -> (n, d) float64 features of ``method.encode``, checked finite."""
    features = method.encode(images).flatten(1).double()
    if not torch.isfinite(features).all():
        raise GenbenchError("encode returned NaN or inf features")
    return features


@torch.no_grad()
def extract_features(method: Any, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """(N, C, H, W) images -> (N, d) float64 features from ``method.encode`` in eval mode."""
    was_training = method.training
    method.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        chunks.append(encode_features(method, images[start : start + batch_size].to(device)).cpu())
    method.train(was_training)
    return torch.cat(chunks)


def accuracy(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    # probes run on rank 0 over gathered features: no cross-rank sync here
    metric = MulticlassAccuracy(num_classes=num_classes, average="micro", sync_on_compute=False)
    metric.update(predictions, labels)
    return float(metric.compute())


def _standardise(fit: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = fit.mean(0), fit.std(0).clamp_min(1e-8)
    return [(x - mean) / std for x in (fit, *others)]


class LogisticProbe:
    """Multinomial logistic regression, L2 on the weights (not the bias), L-BFGS."""

    def __init__(self, c: float, num_classes: int, max_iter: int) -> None:
        self.c, self.num_classes, self.max_iter = c, num_classes, max_iter
        self.weight = torch.zeros(0)
        self.bias = torch.zeros(num_classes, dtype=torch.float64)

    def fit(self, x: Tensor, y: Tensor) -> LogisticProbe:
        x = x.double()
        weight = torch.zeros(x.shape[1], self.num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(self.num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        l2 = 1.0 / (2.0 * self.c * len(x))  # sklearn's objective divided by C * N

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def predict(self, x: Tensor) -> Tensor:
        return (x.double() @ self.weight + self.bias).argmax(1)


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    settings: EvalSettings,
) -> dict[str, Any]:
    """Logistic regression with C picked on a validation split of train; test accuracy."""
    fit_idx, val_idx = validation_split(len(train_feats), settings.probe_val_fraction)
    fit_x, val_x = _standardise(train_feats[fit_idx], train_feats[val_idx])
    fit_y, val_y = train_labels[fit_idx], train_labels[val_idx]
    val_scores = {}
    for c in settings.probe_c_grid:
        model = LogisticProbe(c, num_classes, settings.probe_max_iter).fit(fit_x, fit_y)
        val_scores[c] = accuracy(model.predict(val_x), val_y, num_classes)
    best_c = max(settings.probe_c_grid, key=lambda c: (val_scores[c], -c))  # ties: stronger L2
    all_x, test_x = _standardise(train_feats, test_feats)
    model = LogisticProbe(best_c, num_classes, settings.probe_max_iter).fit(all_x, train_labels)
    test_acc = accuracy(model.predict(test_x), test_labels, num_classes)
    return {
        "linear_acc": test_acc,
        "settings": {
            "c": best_c,
            "val_accuracy": val_scores[best_c],
            "c_grid": list(settings.probe_c_grid),
            "val_fraction": settings.probe_val_fraction,
            "feature_dim": int(train_feats.shape[1]),
        },
    }


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> float:
    """Weighted kNN with cosine similarity on standardised features."""
    train_x, test_x = _standardise(train_feats, test_feats)
    train_x = torch.nn.functional.normalize(train_x, dim=1)
    test_x = torch.nn.functional.normalize(test_x, dim=1)
    k = min(k, len(train_x))
    predictions = []
    for start in range(0, len(test_x), 1024):
        sims = test_x[start : start + 1024] @ train_x.T  # (b, N)
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes = torch.zeros(len(sims), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        predictions.append(votes.argmax(1))
    return accuracy(torch.cat(predictions), test_labels, num_classes)


def evaluate_probe(
    method: Any,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    settings: EvalSettings,
    device: torch.device,
) -> dict[str, Any]:
    """Linear probe and kNN accuracy of ``method``'s features, in one process (runs score
    it sharded across ranks with :class:`bench.evaluators.probe.Probe`)."""
    train_feats = extract_features(method, train_images, settings.eval_batch_size, device)
    test_feats = extract_features(method, test_images, settings.eval_batch_size, device)
    return probe_scores(train_feats, train_labels, test_feats, test_labels, num_classes, settings)


def probe_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    settings: EvalSettings,
) -> dict[str, Any]:
    """A result's probe entry from frozen features: linear-probe and kNN test accuracy."""
    out = linear_probe(train_feats, train_labels, test_feats, test_labels, num_classes, settings)
    out["knn_acc"] = knn_accuracy(
        train_feats,
        train_labels,
        test_feats,
        test_labels,
        num_classes,
        settings.knn_k,
        settings.knn_temperature,
    )
    out["settings"].update(
        {
            "knn_k": settings.knn_k,
            "knn_temperature": settings.knn_temperature,
            "train_split": "train",
            "test_split": "test",
        }
    )
    return out
