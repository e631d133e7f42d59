"""The study plots: written from result files only, deterministic SVG, Pareto front."""

from __future__ import annotations

from pathlib import Path

from bench.plots import pareto_front, sampler_family, write_plots
from bench.report import aggregate
from bench.results import RunResult


def _result(method: str, seed: int, fid: float, bpd: float | None, flops: float) -> RunResult:
    curve = [
        {
            "images": images,
            "images_seen": images,
            "step": images // 64,
            "train_wall_s": images / 1000 * (1 + seed),
            "train_flops": 3 * flops * images,
            "fidelity": {"fid": fid * 4000 / images + seed},
            "likelihood": {"bpd": bpd} if bpd is not None else {},
        }
        for images in (1000, 2000, 4000)
    ]
    metrics = {
        "fidelity": {"fid": fid + seed, "settings": {"extractor": "digits-cnn"}},
        "throughput": {
            "forward_flops_per_image": flops,
            "train_images_seen": 4000,
            "nfe": 10,
            "params": 5,
        },
        "curve": curve,
        "fidelity_variants": [
            {"fid": fid + 5 + seed, "variant": {"sampler": "ddim", "steps": 5}, "nfe": 5,
             "settings": {"extractor": "digits-cnn"}},
            {"fid": fid + 2 + seed, "variant": {"sampler": "ddim", "steps": 20}, "nfe": 20,
             "settings": {"extractor": "digits-cnn"}},
        ],
    }  # fmt: skip
    if bpd is not None:
        metrics["likelihood"] = {"bpd": bpd + 0.01 * seed, "is_bound": method == "a"}
    return RunResult(
        method,
        "digits",
        {"name": "quick", "version": 1},
        seed,
        "ok",
        metrics,
        {},
        {"train_wall_s": 10.0 * flops},
    )


def _results() -> list[RunResult]:
    rows = (("a", 20.0, 2.0, 1e6), ("b", 30.0, None, 1e5), ("c", 50.0, 2.5, 1e7))
    return [_result(m, s, fid, bpd, flops) for m, fid, bpd, flops in rows for s in (0, 1)]


def test_every_plot_is_written_and_svg_is_deterministic(tmp_path: Path) -> None:
    results = _results()
    table = aggregate(results)
    first = write_plots(results, table, tmp_path / "one")
    names = sorted(p.name for p in first)
    for stem in ("curve-fid", "curve-bpd", "pareto-fid_digits-cnn", "pareto-bpd", "fid-vs-nfe",
                 "bars-bpd"):  # fmt: skip
        assert f"{stem}.png" in names and f"{stem}.svg" in names, stem
    second = write_plots(results, table, tmp_path / "two")
    for a, b in zip(sorted(first), sorted(second), strict=True):
        if a.suffix == ".svg":
            assert a.read_bytes() == b.read_bytes(), a.name


def test_pareto_front_and_sampler_families() -> None:
    points = [("cheap-bad", 1.0, 50.0), ("mid", 10.0, 20.0), ("dear-good", 100.0, 10.0),
              ("dominated", 50.0, 30.0)]  # fmt: skip
    assert pareto_front(points, lower_is_better=True) == ["cheap-bad", "mid", "dear-good"]
    assert pareto_front(points, lower_is_better=False) == ["cheap-bad"]
    assert sampler_family("ddpm[sampler=ddim,steps=10]") == "ddpm ddim"
    assert sampler_family("ddpm") == "ddpm (own sampler)"
    assert sampler_family("flow-matching[sampler=euler,steps=10]") == "flow-matching euler"
