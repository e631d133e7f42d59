"""The fidelity metrics beside FID (bench/evaluators/fidelity_metrics), each against an
independent computation on small synthetic feature sets whose answer is known, and the
memorization score on real images: training images as samples are flagged, test images not.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.evaluators import column, direction
from bench.evaluators.fidelity import Fidelity
from bench.evaluators.fidelity_metrics import SampleSets, fidelity_metrics, score_sets
from bench.evaluators.fidelity_metrics.density_coverage import density_coverage
from bench.evaluators.fidelity_metrics.fd_infinity import fd_infinity, subset_sizes
from bench.evaluators.fidelity_metrics.memorization import memorization
from bench.evaluators.fidelity_metrics.vendi import vendi_score
from bench.protocol import EvalSettings


def _gaussian(n: int, d: int, seed: int, mean: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return mean + scale * torch.randn(n, d, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- density and coverage


def _density_coverage_loops(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Naeem et al.'s eqs. 4-5 written out point by point."""
    radii = []
    for i, x in enumerate(real):
        others = sorted(np.linalg.norm(x - y) for j, y in enumerate(real) if j != i)
        radii.append(others[k - 1])
    inside = [
        [np.linalg.norm(y - x) < radius for y in fake]
        for x, radius in zip(real, radii, strict=True)
    ]
    density = sum(map(sum, inside)) / (k * len(fake))
    coverage = sum(any(row) for row in inside) / len(real)
    return density, coverage


def test_density_and_coverage_match_the_papers_definition() -> None:
    real, fake = _gaussian(40, 3, 0), _gaussian(30, 3, 1, mean=0.3)
    for k in (1, 3, 5):
        ours = density_coverage(real, fake, k)
        assert ours == pytest.approx(_density_coverage_loops(real.numpy(), fake.numpy(), k))


def test_density_and_coverage_of_a_copy_are_one() -> None:
    real = _gaussian(300, 8, 2)
    assert density_coverage(real, real.clone(), 3) == pytest.approx((1.0, 1.0))


def test_density_and_coverage_of_the_same_distribution_are_their_expectations() -> None:
    real, fake = _gaussian(2000, 4, 3), _gaussian(2000, 4, 4)
    density, coverage = density_coverage(real, fake, 3)
    assert density == pytest.approx(1.0, abs=0.06)
    assert coverage == pytest.approx(1 - 0.5**3, abs=0.03)  # Naeem et al., section 4.2
    # a mode-dropping generator: half the real distribution missing
    dropped = fake[fake[:, 0] > 0]
    assert density_coverage(real, dropped, 3)[1] < 0.6


# ---------------------------------------------------------------- Vendi


def _vendi_full_kernel(x: np.ndarray) -> float:
    """Friedman and Dieng's definition on the n x n cosine kernel itself."""
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(z @ z.T / len(z))
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def test_vendi_of_identical_and_of_orthogonal_points() -> None:
    assert vendi_score(torch.ones(50, 6, dtype=torch.float64)) == pytest.approx(1.0)
    assert vendi_score(torch.eye(7, dtype=torch.float64)) == pytest.approx(7.0)
    # 3 groups of identical points, mutually orthogonal: 3 distinct samples
    groups = torch.eye(3, dtype=torch.float64).repeat_interleave(10, dim=0)
    assert vendi_score(groups) == pytest.approx(3.0)


def test_vendi_matches_the_full_kernel_computation() -> None:
    x = _gaussian(60, 5, 5).abs()
    assert vendi_score(x) == pytest.approx(_vendi_full_kernel(x.numpy()), rel=1e-9)


# ---------------------------------------------------------------- FD-infinity


def _frechet_closed_form(mu: np.ndarray, sigma: np.ndarray) -> float:
    """FD between N(mu, sigma) and N(0, I)."""
    root = scipy.linalg.sqrtm(sigma).real
    return float(mu @ mu + np.trace(sigma) + len(mu) - 2 * np.trace(root))


@pytest.mark.parametrize("shift", [0.0, 0.1])
def test_fd_infinity_recovers_the_closed_form_that_fid_overestimates(shift: float) -> None:
    """Samples of N(shift, I) against a large reference of N(0, I): the true Frechet
    distance is d * shift^2; FID of 2,000 samples in 32 dimensions sits above it by its
    1/N bias, FD-infinity removes that bias."""
    d = 32
    reference = _gaussian(60000, d, 6)
    samples = _gaussian(2000, d, 8, mean=shift)
    truth = _frechet_closed_form(np.full(d, shift), np.eye(d))
    assert truth == pytest.approx(d * shift**2)
    value, curve = fd_infinity(samples, reference, points=15, min_fraction=0.1, seed=0)
    plain = curve[-1][1]  # FID of all 2,000 samples
    assert [n for n, _ in curve] == subset_sizes(2000, 15, 0.1)
    assert plain - truth > 0.1  # the bias FID carries
    # most of it gone; what is left is the noise of 2,000 samples (about 0.03 here)
    assert abs(value - truth) < 0.35 * (plain - truth)


def test_subset_sizes_are_evenly_spaced_and_end_at_all_samples() -> None:
    assert subset_sizes(50000, 15, 0.1)[:2] == [5000, 8214]
    assert subset_sizes(50000, 15, 0.1)[-1] == 50000
    assert subset_sizes(10, 15, 0.1) == list(range(2, 11))  # duplicates dropped
    assert subset_sizes(100, 1, 0.1) == [100]
    assert subset_sizes(1000, 4, 0.1, floor=256) == [256, 504, 752, 1000]


def test_fd_infinity_declines_too_few_samples_for_the_feature_width() -> None:
    # 297 samples of 128-d features (digits' test split): FID_N is not linear in 1/N there
    value, curve = fd_infinity(_gaussian(297, 128, 0), _gaussian(1500, 128, 1), 15, 0.1, 0)
    assert value is None and curve == []


# ---------------------------------------------------------------- memorization


def test_memorization_flags_copies_of_the_training_set_and_not_fresh_samples() -> None:
    train, test = _gaussian(1500, 8, 9), _gaussian(400, 8, 10)
    copies = train[torch.randperm(1500, generator=torch.Generator().manual_seed(0))[:500]]
    fresh = _gaussian(500, 8, 11)
    copied = memorization(copies, train, test, quantile=0.05)
    novel = memorization(fresh, train, test, quantile=0.05)
    assert copied["memorized"] == 1.0 and copied["authenticity"] == 0.0
    assert copied["median_train_test_ratio"] == 0.0
    assert novel["memorized"] == pytest.approx(0.05, abs=0.04)  # calibrated: about q
    assert novel["authenticity"] > 0.3
    # half copies, half fresh
    mixed = memorization(torch.cat([copies[:250], fresh[:250]]), train, test, quantile=0.05)
    assert mixed["memorized"] == pytest.approx(0.5 + 0.5 * novel["memorized"], abs=0.05)


def test_authenticity_matches_alaa_et_al_written_out() -> None:
    train, test, samples = _gaussian(50, 3, 12), _gaussian(20, 3, 13), _gaussian(30, 3, 14)
    real, fake = train.numpy(), samples.numpy()
    authentic = []
    for y in fake:
        nearest = int(np.argmin(np.linalg.norm(real - y, axis=1)))
        own = min(np.linalg.norm(real[nearest] - x) for j, x in enumerate(real) if j != nearest)
        authentic.append(np.linalg.norm(y - real[nearest]) > own)
    ours = memorization(samples, train, test, quantile=0.05)["authenticity"]
    assert ours == pytest.approx(float(np.mean(authentic)))


# ---------------------------------------------------------------- the registry and a row


def _sets(**changes: Any) -> SampleSets:
    train, test = _gaussian(300, 6, 15).abs(), _gaussian(100, 6, 16).abs()
    samples = _gaussian(200, 6, 17).abs()
    base = dict(
        extractor="toy",
        samples=samples,
        train=train,
        test=test,
        samples_fid=samples,
        train_fid=train,
        samples_px=samples / 10,
        train_px=train / 10,
        test_px=test / 10,
        sample_labels=None,
        train_labels=None,
        settings=EvalSettings(),
        seed=0,
    )
    return SampleSets(**{**base, **changes})


def test_every_metric_has_its_columns_in_the_fidelity_evaluator() -> None:
    names = {c.name for c in Fidelity.columns}
    for metric in fidelity_metrics():
        for c in metric.columns:
            assert c.name in names
            assert column(f"{c.name}[digits-cnn]") == c
        for key in metric.settings:
            assert key in Fidelity.settings
    assert direction("memorized[pixels]") == "lower"
    assert direction("authenticity[digits-cnn]") == "higher"
    assert direction("coverage[digits-cnn]") == "higher"
    assert direction("fd_inf[digits-cnn]") == "lower"


def test_scores_land_in_one_row_named_by_space() -> None:
    scores = score_sets(_sets())
    assert "intra_fid" not in scores  # unconditional: no class to score
    assert set(scores["pixels"]) == {"memorized", "authenticity"}
    assert set(scores["settings"]) == {"density_coverage", "vendi", "fd_infinity", "memorization"}
    fid_scores = {**scores, "fid": 1.0, "settings": {"extractor": "toy"}}
    row = Fidelity.row(fid_scores)
    assert row["memorized[pixels]"] == scores["pixels"]["memorized"]
    assert row["density[toy]"] == scores["density"]
    assert row["vendi[toy]"] == scores["vendi"]


def test_intra_class_fid_is_the_mean_of_per_class_frechet_distances() -> None:
    labels = torch.arange(200) % 4
    train_labels = torch.arange(300) % 4
    sets = _sets(sample_labels=labels, train_labels=train_labels)
    scores = score_sets(sets)
    expected = []
    for y in range(4):
        a = sets.samples_fid[labels == y].numpy()
        b = sets.train_fid[train_labels == y].numpy()
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = scipy.linalg.sqrtm(s1 @ s2).real
        diff = a.mean(0) - b.mean(0)
        expected.append(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))
    assert scores["intra_fid"] == pytest.approx(float(np.mean(expected)), rel=1e-6)
    assert scores["settings"]["intra_class_fid"]["classes"] == 4


def test_intra_class_fid_sees_samples_drawn_for_the_wrong_class() -> None:
    train = torch.cat([_gaussian(150, 3, 18, mean=m) for m in (0.0, 4.0)])
    train_labels = torch.tensor([0] * 150 + [1] * 150)
    samples = torch.cat([_gaussian(100, 3, 19, mean=m) for m in (0.0, 4.0)])
    right = torch.tensor([0] * 100 + [1] * 100)
    base = dict(
        train=train,
        train_fid=train,
        samples=samples,
        samples_fid=samples,
        test=_gaussian(50, 3, 20),
        samples_px=samples,
        train_px=train,
        test_px=_gaussian(50, 3, 20),
    )
    good = score_sets(_sets(**base, sample_labels=right, train_labels=train_labels))
    swapped = score_sets(_sets(**base, sample_labels=1 - right, train_labels=train_labels))
    assert good["intra_fid"] < 0.2 < 10 < swapped["intra_fid"]


def test_fidelity_metric_settings_are_validated() -> None:
    from bench.errors import GenbenchError
    from bench.protocol import load_protocol

    protocol = load_protocol("smoke")
    for bad in ({"eval.memorization_quantile": 1.5}, {"eval.fd_inf_points": 1}):
        with pytest.raises(GenbenchError):
            protocol.with_overrides(bad)


# ---------------------------------------------------------------- real images


def test_training_images_as_samples_are_flagged_and_test_images_are_not(tmp_path: Path) -> None:
    """The two real-data rows, evaluated as any method is: real-data (test images) reads as
    novel, real-data[split=train] (training images) as memorised, in both spaces."""
    from bench.registry import METHODS
    from bench.runner import evaluate, plan_study

    study = plan_study("smoke", methods=["real-data"], out=tmp_path / "runs", device="cpu")
    spec, data = study.runs[0], study.data
    method = METHODS.get("real-data").build(data.spec, spec.hparams)
    method.prepare(data.images("train"), data.labels("train"), data.images("test"))
    metrics = evaluate(method, spec, study, None)
    assert metrics is not None
    test_row = metrics["fidelity"]
    (train_row,) = metrics["fidelity_variants"]
    assert train_row["variant"] == {"split": "train"}
    for row, memorised in ((test_row, False), (train_row, True)):
        for scores in (row, row["pixels"]):
            if memorised:
                assert scores["memorized"] == 1.0 and scores["authenticity"] == 0.0
            else:
                assert scores["memorized"] <= 0.1 and scores["authenticity"] > 0.3
    assert train_row["settings"]["sampler"]["source"] == "train split"
    assert test_row["settings"]["sampler"]["source"] == "test split"
    assert test_row["vendi"] > 1
    # FID under the second digits network too, from the same samples
    second = test_row["second_extractors"]["digits-cnn-b"]
    assert second["fid"] > 0 and set(second) == {"fid", "settings"}
    assert second["settings"]["extractor"] == "digits-cnn-b"
    # 297 test images of 128-d features: too few for FD-infinity, and it says so
    assert "fd_inf" not in test_row
    assert "needs at least 512" in test_row["settings"]["metrics"]["fd_infinity"]["skipped"]
    assert set(itertools.chain(test_row["settings"]["metrics"])) >= {"memorization", "vendi"}


# ---------------------------------------------------------------- pictures


def test_nearest_pairs_show_a_copied_training_image_as_twins() -> None:
    from bench.pictures import nearest_training_pairs

    train = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    copies = train[[7, 3, 40]]
    pairs = nearest_training_pairs(copies, train, count=3)
    assert pairs.shape == (6, 1, 8, 8)
    assert torch.equal(pairs[0::2], pairs[1::2])  # each sample beside itself
    fresh = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(*nearest_training_pairs(fresh, train, count=1))


def test_retrieval_finds_the_querys_class_in_feature_space_not_in_pixels() -> None:
    """Features that encode the class retrieve the query's class; pixels that carry only
    noise do not: the contrast the retrieval grid shows."""
    from bench.pictures import retrieval_rows

    generator = torch.Generator().manual_seed(2)
    train_y, test_y = torch.arange(200) % 4, torch.arange(40) % 4
    features = torch.eye(4, dtype=torch.float64)
    train_x = torch.rand(200, 1, 8, 8, generator=generator)
    test_x = torch.rand(40, 1, 8, 8, generator=generator)
    chosen, by_features, by_pixels = retrieval_rows(
        features[train_y] + 0.01 * torch.rand(200, 4, generator=generator, dtype=torch.float64),
        features[test_y],
        train_x,
        test_x,
        seed=0,
    )
    assert len(chosen) == 8 and by_features.shape == by_pixels.shape == (8, 5)
    assert bool((train_y[by_features] == test_y[chosen][:, None]).all())
    assert float((train_y[by_pixels] == test_y[chosen][:, None]).double().mean()) < 0.6
    again = retrieval_rows(features[train_y], features[test_y], train_x, test_x, seed=0)[0]
    assert torch.equal(again, chosen)  # the queries come from the seed


def test_run_folders_and_leaderboards_get_the_pictures(tmp_path: Path) -> None:
    """A sample-capable run writes nearest.png, an encoder retrieval.png; the report copies
    them next to the leaderboard and shows them in the markdown and the HTML page."""
    import json

    from bench.cli import main

    out = tmp_path / "runs"
    args = ["run", "--protocol", "smoke", "--methods", "real-data,raw-pixels", "--out", str(out)]
    assert main([*args, "--no-report", "--device", "cpu"]) == 0
    runs = out / "smoke" / "digits"
    assert (runs / "real-data" / "seed-0" / "nearest.png").is_file()
    assert (runs / "raw-pixels" / "seed-0" / "retrieval.png").is_file()
    report = tmp_path / "reports"
    assert main(["report", "--runs", str(out), "--protocol", "smoke", "--out", str(report)]) == 0
    folder = report / "smoke-digits"
    assert (folder / "samples" / "real-data.nearest.png").is_file()
    markdown = (folder / "leaderboard.md").read_text()
    assert "![real-data](samples/real-data.nearest.png)" in markdown
    assert "![raw-pixels](samples/raw-pixels.retrieval.png)" in markdown
    page = (folder / "leaderboard.html").read_text()
    block = page.split('<script type="application/json" id="leaderboard-data">', 1)[1]
    data = json.loads(block.split("</script>", 1)[0])
    kinds = {(s["method"], s["kind"]) for s in data["samples"]}
    assert {
        ("real-data", "nearest"),
        ("raw-pixels", "retrieval"),
        ("real-data", "samples"),
    } <= kinds


# ---------------------------------------------------------------- a second feature network


def test_each_embedded_dataset_has_an_independent_second_network() -> None:
    from bench.metrics.extractors import (
        DOMAIN_ARCHS,
        load_domain_classifier,
        second_extractors,
    )

    assert second_extractors("digits", "digits-cnn") == ("digits-cnn-b",)
    assert second_extractors("mnist5k", "mnist-cnn") == ("mnist-cnn-b",)
    assert second_extractors("cifar10", "inception-v3-compat") == ()
    for first, second in (("digits-cnn", "digits-cnn-b"), ("mnist-cnn", "mnist-cnn-b")):
        a, sha_a, meta_a = load_domain_classifier(first)
        b, sha_b, meta_b = load_domain_classifier(second)
        assert sha_a != sha_b
        assert DOMAIN_ARCHS[first] != DOMAIN_ARCHS[second]  # another architecture and seed
        assert b.config.get("arch") == "cnn-b" and "arch" not in a.config
        assert meta_b["test_accuracy"] > 0.9  # a working classifier of the same data
        size = a.config["size"]
        images = torch.randint(0, 256, (4, 1, size, size), dtype=torch.uint8)
        assert a.features(images).shape == b.features(images).shape == (4, 128)


def test_feature_space_agreement_ranks_and_moves() -> None:
    import pandas as pd

    from bench.stats import feature_space_agreement

    first = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}
    second = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 3.0, "e": 4.0}  # b falls from 2nd to 5th
    table = pd.DataFrame(
        {
            "method": list(first),
            "fid[x]_mean": list(first.values()),
            "kid[x]_mean": [0.0] * 5,
            "fid[y]_mean": list(second.values()),
        }
    )
    (item,) = feature_space_agreement(table)
    assert (item.first, item.second, item.methods) == ("fid[x]", "fid[y]", 5)
    assert item.spearman == pytest.approx(1 - 6 * (0 + 9 + 1 + 1 + 1) / (5 * 24))
    assert item.moves[0] == ("b", 2, 5)
    assert "fid[x] vs fid[y]: Spearman 0.400 over 5 rows; moving most: b 2 → 5" in item.sentence()
