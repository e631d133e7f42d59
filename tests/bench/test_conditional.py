"""Class-conditional sampling: balanced labels go in, the domain classifier scores what
comes out (does a sample drawn for label y look like a y)."""

from __future__ import annotations

import torch

from bench.method import SAMPLE, DataSpec, Method
from bench.runner import evaluate, plan_study


class HeldOutByLabel(Method):
    """Returns held-out images of the requested class (or ignores the labels)."""

    capabilities = frozenset({SAMPLE})
    trainable = False
    class_conditional = True

    def __init__(self, spec: DataSpec, honour_labels: bool) -> None:
        super().__init__(spec)
        self.honour_labels = honour_labels
        self.seen_labels: list[torch.Tensor] = []

    def prepare(self, train_x, train_y, held_out_x) -> None:
        self.images, self.labels = train_x, train_y

    def sample(self, n, generator, labels=None):
        assert labels is not None and len(labels) == n
        self.seen_labels.append(labels.clone())
        wanted = labels if self.honour_labels else (labels + 1) % 10
        picks = [torch.nonzero(self.labels == y)[k % 50, 0] for k, y in enumerate(wanted.tolist())]
        return self.images[torch.stack(picks)]


def test_sample_classifier_accuracy_is_reported(tmp_path) -> None:
    study = plan_study("smoke", methods=["real-data"], out=tmp_path, device="cpu")
    spec, data = study.runs[0], study.data
    scores = {}
    for honour in (True, False):
        method = HeldOutByLabel(data.spec, honour)
        method.prepare(data.images("train"), data.labels("train"), data.images("test"))
        metrics = evaluate(method, spec, study, None)
        scores[honour] = metrics["fidelity"]["sample_acc"]
        labels = torch.cat(method.seen_labels[:2])  # the two FID batches (then a FLOP count)
        assert torch.bincount(labels).tolist() == [30] * 10  # class-balanced, 300 samples
    assert scores[True] > 0.95 and scores[False] < 0.05
