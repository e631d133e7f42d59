"""Every random stream of a run, derived from the run's seed in one place.

A stream is a function of (run seed, purpose, index) only: never of the rank, the number of
ranks, the micro-batch or whether the run was resumed, so that all of those reproduce one
uninterrupted process.

- global RNG at the start of a run: the run seed (weights' initialisation);
- batch order of epoch e: ``seed * 1_000_003 + e`` (:func:`bench.train.batch_indices`);
- training noise of step s: ``derive(seed, "train-noise", s)`` (:class:`bench.method.BatchNoise`;
  batch-global draws of a step, a reflow's couplings, derive from that step seed);
- evaluation section: sha256 of (seed, section), 32 bits (:mod:`bench.runner`);
- evaluation chunk c of a sharded section: ``derive(seed, section, "chunk", c)``.
"""

from __future__ import annotations

import hashlib


def derive(seed: int, *names: object, bits: int = 63) -> int:
    """A seed of ``bits`` bits from the run seed and a purpose (sha256 of their text)."""
    text = ":".join(str(part) for part in (seed, *names))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - bits)


def epoch_seed(seed: int, epoch: int) -> int:
    """The permutation of epoch ``epoch`` (the formula of the first results: kept so that
    batch orders, and the results that depend on them, stay what they were)."""
    return seed * 1_000_003 + epoch


def train_noise_seed(seed: int, step: int) -> int:
    """The per-example noise of training step ``step``."""
    return derive(seed, "train-noise", step)


def section_seed(seed: int, section: str) -> int:
    """The seed of one evaluation section: a function of (run seed, section) only, so a
    resumed evaluation that skips finished sections draws what an uninterrupted one draws."""
    digest = hashlib.sha256(f"{seed}:{section}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def chunk_seed(seed: int, section: str, chunk: int) -> int:
    """The seed of chunk ``chunk`` of a sharded evaluation section (the sampling of images
    ``chunk * size ...``): whichever rank draws it, it draws the same images."""
    return derive(seed, section, "chunk", chunk)
