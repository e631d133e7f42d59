"""Reload a run (bench.load_run), draw its samples again (genbench sample) and score samples
made anywhere (genbench score): the same images give the same numbers as the run's own
evaluation, and bad sample files are one line with nothing written."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import plugins
from bench.cli import main
from bench.data import load_dataset
from bench.errors import GenbenchError
from bench.evaluators.fidelity import GRID_FILE, GRID_IMAGES, save_grid
from bench.metrics import fidelity
from bench.registry import DATASETS, EXTRACTORS, METHODS
from bench.runs import draw_samples, load_run, open_run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_method.py"


@pytest.fixture
def isolated_registries(monkeypatch):
    METHODS.names()
    for registry in (METHODS, DATASETS, EXTRACTORS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    monkeypatch.setattr(plugins, "_LOADED", dict(plugins._LOADED))
    monkeypatch.setattr(plugins, "_METHOD_OWNER", dict(plugins._METHOD_OWNER))


def _sample_count(run, data) -> int:
    count = min(run.fid_samples, len(data.levels("train")))
    cap = getattr(run.method, "max_samples", None)
    return min(count, int(cap)) if cap is not None else count


def _dir(out: Path, name: str) -> Path:
    """A smoke-study run's folder (results returned by run_study carry no source_dir)."""
    return out / "smoke" / "digits" / name / "seed-0"


def _grid_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def test_load_run_reproduces_every_methods_evaluation(smoke_study, tmp_path: Path) -> None:
    """For every method that samples, and every sampler variant: load_run + draw_samples give
    bitwise the first images the evaluation saved, and the run's FID to 1e-6."""
    out, study, results = smoke_study
    checked = 0
    for name, result in sorted(results.items()):
        if result.status != "ok" or "fidelity" not in result.metrics:
            continue
        run = open_run(_dir(out, name))
        assert not run.method.training
        count = _sample_count(run, study.data)
        variants = [({}, result.metrics["fidelity"])]
        variants += [(v["variant"], v) for v in result.metrics.get("fidelity_variants", [])]
        for kwargs, scores in variants:
            images, labels, info = draw_samples(run, count, kwargs)
            if not kwargs:  # the evaluation's own grid: bitwise the same pixels
                grid = tmp_path / f"{name}.png"
                save_grid(images[:GRID_IMAGES].float() / 255.0, grid)
                saved = _dir(out, name) / GRID_FILE
                assert np.array_equal(_grid_pixels(grid), _grid_pixels(saved)), name
            again = fidelity.evaluate_uint8_samples(
                images, study.data, study.extractor, study.protocol.eval, 0, torch.device("cpu")
            )
            assert again["fid"] == pytest.approx(scores["fid"], rel=1e-6), (name, kwargs)
            assert again["precision"] == pytest.approx(scores["precision"], rel=1e-6)
            checked += 1
    assert checked >= 20


def test_sample_then_score_cli_gives_the_runs_fid(smoke_study, tmp_path: Path, capsys) -> None:
    out, _, results = smoke_study
    for name in ("ddpm", "vae"):
        run_dir = _dir(out, name)
        target = tmp_path / f"{name}.npz"
        assert main(["sample", "--run", str(run_dir), "--out", str(target)]) == 0
        with np.load(target, allow_pickle=False) as archive:
            assert archive["images"].shape == (300, 8, 8) and archive["images"].dtype == np.uint8
            info = json.loads(str(archive["info"]))
        assert info["section"] == "fidelity:0" and info["seed"] == 0
        capsys.readouterr()
        args = ["score", "--samples", str(target), "--dataset", "digits", "--protocol", "smoke"]
        assert main([*args, "--json"]) == 0
        scores = json.loads(capsys.readouterr().out)
        expected = results[name].metrics["fidelity"]
        for key in ("fid", "kid", "precision", "recall"):
            assert scores[key] == pytest.approx(expected[key], rel=1e-6), (name, key)
    # a sampler variant by its settings: ddpm's DDIM row at 10 steps
    variant = next(
        v for v in results["ddpm"].metrics["fidelity_variants"] if v["variant"].get("steps") == 10
    )
    target = tmp_path / "ddim10.npz"
    sampler = [f"--sampler={k}={v}" for k, v in variant["variant"].items() if k != "steps"]
    code = main(
        ["sample", "--run", str(_dir(out, "ddpm")), "--out", str(target), "--steps", "10"] + sampler
    )
    assert code == 0
    capsys.readouterr()
    assert (
        main(
            [
                "score",
                "--samples",
                str(target),
                "--dataset",
                "digits",
                "--protocol",
                "smoke",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(variant["fid"], rel=1e-6)


def test_score_of_the_real_test_split_is_the_real_data_row(
    smoke_study, tmp_path, capsys, caplog
) -> None:
    _, study, results = smoke_study
    data = study.data
    test = fidelity.levels_to_uint8(data.levels("test"), data.spec.num_levels).numpy()[:, 0]
    target = tmp_path / "test-split.npz"
    np.savez(target, images=test)
    assert (
        main(
            [
                "score",
                "--samples",
                str(target),
                "--dataset",
                "digits",
                "--protocol",
                "smoke",
                "--json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    warned = captured.err + caplog.text
    assert "fewer than protocol smoke's 300" in warned  # 297 test images: said so
    fid = json.loads(captured.out)["fid"]
    assert fid == pytest.approx(results["real-data"].metrics["fidelity"]["fid"], rel=1e-6)


def test_png_folder_scores_like_the_npz(smoke_study, tmp_path: Path, capsys) -> None:
    out, _, results = smoke_study
    run_dir = _dir(out, "gan")
    assert main(["sample", "--run", str(run_dir), "--out", str(tmp_path / "pngs")]) == 0
    assert main(["sample", "--run", str(run_dir), "--out", str(tmp_path / "s.npz")]) == 0
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 300
    capsys.readouterr()
    scores = []
    for source in ("pngs", "s.npz"):
        args = ["score", "--samples", str(tmp_path / source), "--dataset", "digits"]
        assert main([*args, "--protocol", "smoke", "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0]["fid"] == scores[1]["fid"] == results["gan"].metrics["fidelity"]["fid"]


def _bad_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _bad_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (400, 8, 8), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(good[index]).save(folder / f"{index}.png")
    Image.fromarray(np.zeros((9, 8), dtype=np.uint8)).save(folder / "3-odd.png")
    nan = good.astype(np.float32) / 255.0
    nan[5, 2, 2] = np.nan
    hostile = tmp_path / "hostile.npz"
    np.savez(hostile, images=np.array([object()], dtype=object))
    not_npz = tmp_path / "junk.npz"
    not_npz.write_bytes(b"not a zip file")
    return {
        "wrong shape": (
            _bad_npz(tmp_path / "shape.npz", images=good[:, :7]),
            "have shape (400, 7, 8)",
        ),
        "wrong dtype": (
            _bad_npz(tmp_path / "dtype.npz", images=good.astype(np.int64)),
            "dtype int64",
        ),
        "values out of range": (
            _bad_npz(tmp_path / "range.npz", images=good.astype(np.float32)),
            "float images must lie in [0, 1]",
        ),
        "too few": (_bad_npz(tmp_path / "few.npz", images=good[:1]), "at least 2 are needed"),
        "nan": (_bad_npz(tmp_path / "nan.npz", images=nan), "NaN or inf"),
        "object array": (hostile, "not a plain numeric npz"),
        "no images key": (_bad_npz(tmp_path / "key.npz", samples=good), "no 'images' array"),
        "not an npz": (not_npz, "is not a readable .npz file"),
        "bad labels": (
            _bad_npz(tmp_path / "labels.npz", images=good, labels=np.full(400, 12)),
            "labels must lie in 0..9",
        ),
        "odd png size": (folder, "3-odd.png is 8x9"),
        "missing": (tmp_path / "nothing.npz", "do not exist"),
        "too few for --as": (
            _bad_npz(tmp_path / "short.npz", images=good[:100]),
            "give at least 300 for --as",
        ),
    }


def test_bad_sample_files_are_one_line_and_keep_results(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    fine = _bad_npz(tmp_path / "fine.npz", images=rng.integers(0, 256, (300, 8, 8), dtype=np.uint8))
    base = ["score", "--dataset", "digits", "--protocol", "smoke", "--out", str(tmp_path / "runs")]
    assert main([*base, "--samples", str(fine), "--as", "theirs"]) == 0
    written = tmp_path / "runs" / "smoke" / "digits" / "theirs" / "seed-0" / "result.json"
    before = written.read_bytes()
    capsys.readouterr()
    for case, (path, message) in _bad_cases(tmp_path).items():
        code = main([*base, "--samples", str(path), "--as", "theirs"])
        err = capsys.readouterr().err
        assert code == 2, case
        assert len(err.strip().splitlines()) == 1 and message in err, (case, err)
        assert written.read_bytes() == before, case  # the earlier row is untouched
    assert not (written.parent / "history").exists()


def test_external_row_joins_the_leaderboard(smoke_study, tmp_path: Path, capsys) -> None:
    out, _, results = smoke_study
    runs = tmp_path / "runs"
    target = tmp_path / "s.npz"
    assert main(["sample", "--run", str(_dir(out, "vae")), "--out", str(target)]) == 0
    base = ["score", "--samples", str(target), "--dataset", "digits", "--protocol", "smoke"]
    assert main([*base, "--as", "their-vae", "--out", str(runs)]) == 0
    result = json.loads((runs / "smoke/digits/their-vae/seed-0/result.json").read_text())
    assert result["config"]["external"] is True and result["status"] == "ok"
    assert result["config"]["samples"]["sha256"]
    # a trained row of ours next to it, then the leaderboard marks the external one
    assert (
        main(
            [
                "run",
                "--protocol",
                "smoke",
                "--device",
                "cpu",
                "--out",
                str(runs),
                "--methods",
                "real-data",
                "--no-report",
            ]
        )
        == 0
    )
    assert main(["report", "--runs", str(runs), "--protocol", "smoke", "--dataset", "digits"]) == 0
    board = (runs / "leaderboards/smoke-digits/leaderboard.md").read_text()
    assert "their-vae (external)" in board and "real-data (external)" not in board
    capsys.readouterr()
    # refused: one of our method names, and a trained run's folder
    assert main([*base, "--as", "ddpm", "--out", str(runs)]) == 2
    assert "is a genbench method" in capsys.readouterr().err
    with pytest.raises(GenbenchError, match="externally produced row"):
        load_run(runs / "smoke/digits/their-vae/seed-0")


def test_load_run_refuses_what_it_cannot_trust(smoke_study, tmp_path: Path) -> None:
    import shutil

    out, _, results = smoke_study
    with pytest.raises(GenbenchError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenbenchError, match="not a finished run"):
        load_run(tmp_path / "empty")
    copy = tmp_path / "copy" / "smoke" / "digits" / "vae" / "seed-0"
    shutil.copytree(_dir(out, "vae"), copy)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(copy / "checkpoint.pt", "wb") as handle:
        pickle.dump(Payload(), handle)
    with pytest.raises(GenbenchError, match="not a loadable checkpoint"):
        load_run(copy)
    assert not (tmp_path / "pwned").exists()
    (copy / "checkpoint.pt").unlink()
    with pytest.raises(GenbenchError, match="no checkpoint.pt"):
        load_run(copy)


def test_plugin_run_reloads_by_itself_and_refuses_a_changed_plugin(
    tmp_path: Path, isolated_registries
) -> None:
    import shutil

    source = tmp_path / "mine.py"
    shutil.copy(EXAMPLE, source)
    runs = tmp_path / "runs"
    args = ["run", "--protocol", "smoke", "--device", "cpu", "--out", str(runs), "--no-report"]
    assert (
        main(
            [
                *args,
                "--include",
                str(source),
                "--methods",
                "pixel-mixture",
                "--set",
                "train.budget_images=256",
            ]
        )
        == 0
    )
    run_dir = runs / "smoke/digits/pixel-mixture/seed-0"
    METHODS.unregister("pixel-mixture")  # as in a fresh process that did not --include it
    plugins._LOADED.clear()
    method = load_run(run_dir)  # the result names the plug-in file; same sha256: loaded
    assert type(method).__name__ == "PixelMixture" and not method.training
    METHODS.unregister("pixel-mixture")
    plugins._LOADED.clear()
    source.write_text(source.read_text() + "\n# changed\n")
    with pytest.raises(GenbenchError, match="has changed since"):
        load_run(run_dir)


def test_folder_and_npz_datasets_give_identical_results(
    tmp_path: Path, isolated_registries
) -> None:
    """The same images as a folder of PNGs and as an npz (rows in another order): identical
    splits, identical results."""
    data = load_dataset("digits")
    levels = torch.cat([data.levels("train"), data.levels("test")])[:, 0]
    labels = torch.cat([data.labels("train"), data.labels("test")])
    images = fidelity.levels_to_uint8(levels, 17).numpy()
    folder = tmp_path / "a" / "mine"
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{index:05d}.png")
    order = np.random.default_rng(3).permutation(len(images))
    npz = tmp_path / "b" / "mine.npz"
    npz.parent.mkdir()
    np.savez(npz, images=images[order], labels=labels.numpy()[order])
    outcomes = []
    for spec in (f"folder:{folder}", f"npz:{npz}"):
        runs = tmp_path / spec.split(":")[0]
        code = main(
            [
                "run", "--protocol", "smoke", "--device", "cpu", "--out", str(runs),
                "--dataset", spec, "--extractor", "digits-cnn", "--no-report",
                "--methods", "independent-pixels,real-data",
            ]
        )  # fmt: skip
        assert code == 0
        for method in ("independent-pixels", "real-data"):
            result = json.loads((runs / f"smoke/mine/{method}/seed-0/result.json").read_text())
            outcomes.append(
                (method, result["metrics"]["fidelity"], result["metrics"].get("likelihood"))
            )
            assert result["config"]["dataset"]["files"]["content_sha256"]
    half = len(outcomes) // 2
    for (method, fid_a, ll_a), (_, fid_b, ll_b) in zip(
        outcomes[:half], outcomes[half:], strict=True
    ):
        assert fid_a["fid"] == fid_b["fid"], method
        assert ll_a == ll_b, method


def test_unlabeled_npz_skips_the_probe_and_needs_an_extractor(
    tmp_path: Path, isolated_registries, capsys
) -> None:
    data = load_dataset("digits")
    images = fidelity.levels_to_uint8(data.levels("train")[:400], 17).numpy()[:, 0]
    npz = tmp_path / "unlabeled.npz"
    np.savez(npz, images=images)
    runs = tmp_path / "runs"
    base = ["run", "--protocol", "smoke", "--device", "cpu", "--out", str(runs), "--no-report"]
    assert main([*base, "--dataset", f"npz:{npz}", "--methods", "raw-pixels"]) == 2
    assert "name the feature extractor for FID with --extractor" in capsys.readouterr().err
    assert not runs.exists()
    args = [*base, "--dataset", f"npz:{npz}", "--extractor", "digits-cnn"]
    assert main([*args, "--methods", "raw-pixels,real-data"]) == 0
    folder = runs / "smoke" / "unlabeled"
    raw = json.loads((folder / "raw-pixels/seed-0/result.json").read_text())
    assert "probe" not in raw["metrics"]  # no labels: no linear probe
    assert raw["config"]["dataset"]["files"]["labeled"] is False
    real = json.loads((folder / "real-data/seed-0/result.json").read_text())
    assert real["metrics"]["fidelity"]["settings"]["extractor"] == "digits-cnn"
    assert main(["report", "--runs", str(runs)]) == 0
