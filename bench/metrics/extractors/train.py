"""Train a shipped domain classifier on a dataset's train split (deterministic on CPU).

    python -m bench.metrics.extractors.train digits     # -> weights/digits-cnn.pt
    python -m bench.metrics.extractors.train mnist5k    # -> weights/mnist-cnn.pt
    python -m bench.metrics.extractors.train digits --extractor digits-cnn-b   # the second one
    python -m bench.metrics.extractors.train mnist5k --extractor mnist-cnn-b

Uses only the train split (with random +-1/8-image translations as augmentation); the test
accuracy is stored in the weights' metadata and printed. Re-training changes the sha256
that every result records, so it moves FID numbers: bump the protocols' versions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.data import load_dataset
from bench.metrics.extractors import (
    DOMAIN_ARCHS,
    DOMAIN_EXTRACTORS,
    DomainClassifier,
    sha256_file,
)

log = logging.getLogger(__name__)


#: the epochs each shipped network was trained for
EPOCHS = {"digits-cnn": 40, "digits-cnn-b": 60, "mnist-cnn": 15, "mnist-cnn-b": 30}


def to_uint8(levels: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Integer levels -> uint8 0..255 (the extractors' input convention)."""
    return torch.round(levels.float() * (255.0 / (num_levels - 1))).to(torch.uint8)


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to max_shift pixels (zero fill); batched, one call per batch."""
    size = x.shape[-1]
    padded = F.pad(x, [max_shift] * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    rows = (shifts[:, 0, None] + torch.arange(size))[:, :, None]  # (B, S, 1)
    cols = (shifts[:, 1, None] + torch.arange(size))[:, None, :]  # (B, 1, S)
    batch = torch.arange(x.shape[0])[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def train_classifier(
    dataset: str, epochs: int, seed: int = 0, arch: str = "cnn", width: int = 32
) -> tuple[DomainClassifier, float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = load_dataset(dataset)
    spec = data.spec
    train_x = to_uint8(data.levels("train"), spec.num_levels).float() / 255.0
    train_y = data.labels("train")
    model = DomainClassifier(spec.channels, spec.height, spec.num_classes, width, arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    max_shift = max(1, spec.height // 8)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(perm), 64):
            idx = perm[start : start + 64]
            x = random_translate(train_x[idx], max_shift, generator)
            logits = model.classifier(model.head(model.body(x)))
            loss = F.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        log.info("epoch %d loss %.4f", epoch, loss.item())
    model.eval()
    with torch.no_grad():
        test_u8 = to_uint8(data.levels("test"), spec.num_levels)
        accuracy = (model(test_u8)[1].argmax(1) == data.labels("test")).float().mean().item()
    return model, accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "dataset", choices=sorted({i.trained_on for i in DOMAIN_EXTRACTORS.values()})
    )
    parser.add_argument(
        "--extractor",
        choices=sorted(DOMAIN_EXTRACTORS),
        default=None,
        help="which network (its architecture and seed): the dataset's first one by default",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name = args.extractor or next(
        n for n, i in DOMAIN_EXTRACTORS.items() if i.trained_on == args.dataset
    )
    info = DOMAIN_EXTRACTORS[name]
    if info.trained_on != args.dataset:
        parser.error(f"{name} is trained on {info.trained_on}, not {args.dataset}")
    arch, seed = DOMAIN_ARCHS[name]
    width = 32
    epochs = args.epochs or EPOCHS[name]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, accuracy = train_classifier(args.dataset, epochs, seed, arch, width)
    out = args.out or info.weights_path
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": args.dataset,
        "split": "train",
        "epochs": epochs,
        "test_accuracy": accuracy,
        "arch": arch,
        "seed": seed,
    }
    torch.save({"config": model.config, "state_dict": model.state_dict(), "meta": meta}, out)
    print(f"{info.name}: test accuracy {accuracy:.4f}; wrote {out} sha256 {sha256_file(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
