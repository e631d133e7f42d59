"""Bad input, 150+ ways: every case is one line on stderr, exit code 2, and nothing changed.

One tiny finished study (two closed-form rows of the smoke protocol) is set up once; each
case then runs the CLI in-process on it and checks that

- the exit code is 2,
- stderr is exactly one non-empty line starting with ``genbench: error:`` (no traceback,
  no log lines: the error comes before the first run),
- the message names what was wrong (a regex per case, so a case cannot pass by failing
  for an unrelated reason, e.g. a missing dataset), and
- every file under the study's runs folder (and the case's own scratch folder) is
  byte-identical afterwards, with no file added or removed.

Cases that depend on work not yet integrated are listed in :data:`NEEDS_INTEGRATION`,
the one place their ``xfail`` marks come from.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.cli import main
from bench.method import base_range
from bench.registry import METHODS

#: case id -> reason; the lead removes an entry once its integration has landed. Empty
#: when everything the matrix tests is in place (strict=False: a passing case is fine).
NEEDS_INTEGRATION: dict[str, str] = {}

#: the module's study folders, for case set-ups that copy them (filled by the fixture)
WORLD: dict[str, Path] = {}
#: cases that may log "skipping result ..." warnings before their one error line
WARNS = {"report-only-corrupt"}

STUDY = ["--protocol", "smoke", "--out", "{runs}", "--no-report"]
RUN = ["run", *STUDY]
ONE = ["run", *STUDY, "--methods", "independent-pixels"]
#: a bad protocol file's case: one cheap method, so a case that wrongly passes stays short
PROTOCOL_RUN = ["run", "--out", "{runs}", "--no-report", "--methods", "independent-pixels"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The finished study every case must leave untouched, and scratch files beside it."""
    base = tmp_path_factory.mktemp("bad-input")
    runs = base / "runs"
    code = main(
        [
            "run",
            "--protocol",
            "smoke",
            "--methods",
            "independent-pixels,real-data",
            "--set",
            "train.budget_images=64",
            "--out",
            str(runs),
            "--no-report",
        ]
    )
    assert code == 0
    assert (runs / "smoke" / "digits" / "real-data" / "seed-0" / "result.json").is_file()
    scratch = base / "scratch"
    scratch.mkdir()
    (scratch / "a-file").write_text("not a folder\n")
    (scratch / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (scratch / "empty").write_bytes(b"")
    (scratch / "folder.toml").mkdir()
    WORLD.update(runs=runs, scratch=scratch)
    return {"runs": runs, "scratch": scratch, "base": base}


# -- protocol files ----------------------------------------------------------------------
GOOD_PROTOCOL = """\
name = "tiny"
version = 1
description = "bad-input matrix"
dataset = "digits"
seeds = [0]

[train]
budget_images = 64

[eval]
fid_samples = 100

[changelog]
1 = "first"
"""


def _protocol(text: str | bytes) -> Callable[[Path], list[str]]:
    """A case setup that writes a protocol file and returns its --protocol arguments."""

    def setup(folder: Path) -> list[str]:
        path = folder / "protocol.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return ["--protocol", str(path)]

    return setup


def _edit(old: str, new: str) -> str:
    assert old in GOOD_PROTOCOL, old
    return GOOD_PROTOCOL.replace(old, new)


PROTOCOL_CASES: list[tuple[str, str | bytes, str]] = [
    ("binary", bytes(range(256)), "not UTF-8"),
    ("binary-zip-magic", b"PK\x03\x04" + bytes(100), "malformed protocol file"),
    ("utf16", GOOD_PROTOCOL.encode("utf-16"), "not UTF-8|malformed"),
    ("malformed", "name = 'x'\n[train\n", "malformed protocol file"),
    ("unterminated-string", 'name = "tiny\n', "malformed protocol file"),
    ("empty", "", "missing key"),
    ("duplicate-key", 'name = "again"\n' + GOOD_PROTOCOL, "malformed protocol file"),
    ("changelog-key-not-a-version", GOOD_PROTOCOL + 'name = "x"\n', r"\[changelog\]"),
    ("missing-name", _edit('name = "tiny"\n', ""), "missing key 'name'"),
    ("missing-train", _edit("[train]\nbudget_images = 64\n", ""), "missing key 'train'"),
    ("name-int", _edit('name = "tiny"', "name = 5"), "name must be a string"),
    ("name-traversal", _edit('name = "tiny"', 'name = "../../x"'), "name '../../x' must be"),
    ("name-slash", _edit('name = "tiny"', 'name = "a/b"'), "name 'a/b' must be"),
    ("name-empty", _edit('name = "tiny"', 'name = ""'), "name '' must be"),
    ("dataset-list", _edit('dataset = "digits"', 'dataset = ["digits"]'), "dataset must be"),
    ("dataset-unknown", _edit('dataset = "digits"', 'dataset = "digitz"'), "unknown dataset"),
    ("description-int", _edit('description = "bad-input matrix"', "description = 1"), "descr"),
    ("version-string", _edit("version = 1", 'version = "1"'), "version must be"),
    ("version-zero", _edit("version = 1", "version = 0"), "version must be"),
    ("version-bool", _edit("version = 1", "version = true"), "version must be"),
    ("version-float", _edit("version = 1", "version = 1.0"), "version must be"),
    ("version-no-changelog", _edit("version = 1", "version = 2"), "no line for version 2"),
    ("seeds-string", _edit("seeds = [0]", 'seeds = "0"'), "seeds must be"),
    ("seeds-empty", _edit("seeds = [0]", "seeds = []"), "seeds must be"),
    ("seeds-negative", _edit("seeds = [0]", "seeds = [-1]"), r"not in \[0, 2\*\*31\)"),
    ("seeds-huge", _edit("seeds = [0]", "seeds = [2147483648]"), r"not in \[0, 2\*\*31\)"),
    ("seeds-duplicate", _edit("seeds = [0]", "seeds = [3, 3]"), "listed twice"),
    ("seeds-float", _edit("seeds = [0]", "seeds = [1.5]"), "seeds must be"),
    ("seeds-bool", _edit("seeds = [0]", "seeds = [true]"), "seeds must be"),
    ("unknown-top-key", GOOD_PROTOCOL.replace("seeds", "budget = 3\nseeds"), "unknown protocol"),
    ("train-not-table", _edit("[train]\nbudget_images = 64\n", "train = 5\n"), "must be a table"),
    ("train-unknown", _edit("budget_images = 64", "budget_images = 64\nepochs = 3"), "epochs"),
    ("train-budget-negative", _edit("budget_images = 64", "budget_images = -64"), "at least 0"),
    ("train-budget-string", _edit("budget_images = 64", 'budget_images = "lots"'), "integer"),
    ("train-budget-float", _edit("budget_images = 64", "budget_images = 64.5"), "integer"),
    ("train-budget-int64", _edit("= 64", "= 9223372036854775807"), "too large"),
    (
        "train-batch-zero",
        _edit("budget_images = 64", "budget_images = 64\nbatch_size = 0"),
        "at least 1",
    ),
    ("eval-nan", _edit("fid_samples = 100", "knn_temperature = nan"), "must be finite"),
    ("eval-inf-grid", _edit("fid_samples = 100", "probe_c_grid = [1.0, inf]"), "finite"),
    ("eval-grid-zero", _edit("fid_samples = 100", "probe_c_grid = [0.0]"), "> 0"),
    ("eval-grid-empty", _edit("fid_samples = 100", "probe_c_grid = []"), "must not be empty"),
    ("eval-val-fraction", _edit("fid_samples = 100", "probe_val_fraction = 1.0"), r"\(0, 1\)"),
    ("eval-fid-one", _edit("fid_samples = 100", "fid_samples = 1"), "at least 2"),
    ("eval-date", _edit("fid_samples = 100", "fid_samples = 1979-05-27"), "integer"),
    ("methods-unknown", GOOD_PROTOCOL + "[methods.glw]\nlr = 1.0\n", "unknown method 'glw'"),
    ("methods-not-table", GOOD_PROTOCOL + "[methods]\nglow = 3\n", "key = value"),
    ("methods-list-lr", GOOD_PROTOCOL + "[methods.glow]\nlr = [1, 2]\n", "expected a number"),
    ("methods-nan-lr", GOOD_PROTOCOL + "[methods.glow]\nlr = nan\n", "glow.lr: must be finite"),
    ("methods-zero-width", GOOD_PROTOCOL + "[methods.glow]\nwidth = 0\n", "glow.width"),
    ("methods-bad-choice", GOOD_PROTOCOL + "[methods.glow]\ncoupling = 5\n", "a string"),
    ("methods-unknown-key", GOOD_PROTOCOL + "[methods.glow]\nwidht = 5\n", "'widht'"),
    ("changelog-int", _edit('1 = "first"', "1 = 5"), r"\[changelog\]"),
]


# -- the matrix ------------------------------------------------------------------------
Setup = Callable[[Path], list[str]]


def _case(case_id: str, argv: list[str], match: str, setup: Setup | None = None) -> Any:
    marks = []
    if case_id in NEEDS_INTEGRATION:
        marks.append(
            pytest.mark.xfail(
                reason=f"needs integration: {NEEDS_INTEGRATION[case_id]}", strict=False
            )
        )
    return pytest.param(argv, match, setup, id=case_id, marks=marks)


def _method_cases() -> list[Any]:
    """For every registered method: a value outside a declared range (or a NaN, or an
    unknown key for methods without numeric hyper-parameters) and a wrong type."""
    from bench.method import DataSpec

    probe = DataSpec("probe", 1, 8, 8, 17, 10)
    cases = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        defaults = cls.default_hparams(probe)
        argv = ["run", *STUDY, "--methods", name]
        numeric = {
            k: v for k, v in defaults.items() if isinstance(v, (int, float)) and type(v) is not bool
        }
        ranged = []
        for key, default in numeric.items():
            bounds = (
                cls.hparam_ranges[key] if key in cls.hparam_ranges else base_range(key, default)
            )
            if bounds is not None and bounds[0] is not None:
                ranged.append((key, default, bounds))
        if ranged:
            key, default, bounds = ranged[0]
            lo, brackets = bounds[0], (bounds[2] if len(bounds) > 2 else "[]")
            value = lo if brackets[0] == "(" else lo - (1 if isinstance(default, int) else 0.5)
            cases.append(
                _case(
                    f"range-{name}.{key}",
                    [*argv, "--set", f"{name}.{key}={value}"],
                    rf"for {name}\.{key}: must be",
                )
            )
        floats = [k for k, v in numeric.items() if isinstance(v, float)]
        if floats:
            cases.append(
                _case(
                    f"nan-{name}.{floats[0]}",
                    [*argv, "--set", f"{name}.{floats[0]}=nan"],
                    "must be finite",
                )
            )
        if numeric:
            key = next(iter(numeric))
            cases.append(
                _case(f"type-{name}.{key}", [*argv, "--set", f"{name}.{key}=abc"], "expected")
            )
        else:
            cases.append(
                _case(f"unknown-key-{name}", [*argv, "--set", f"{name}.bogus=1"], "no hyper-par")
            )
    return cases


def _checkpoint_of_another_run(folder: Path) -> list[str]:
    """A copy of the study whose fvsbn run folder holds a checkpoint naming another run."""
    runs = folder / "runs"
    run_dir = runs / "smoke" / "digits" / "fvsbn" / "seed-0"
    run_dir.mkdir(parents=True)
    identity = {"method": "nade", "dataset": "digits", "protocol": "smoke", "seed": 0}
    torch.save({"identity": identity}, run_dir / "checkpoint.pt")
    return ["--out", str(runs)]


def _result_of_another_run(folder: Path) -> list[str]:
    """A copy of the study whose fvsbn run folder holds real-data's (valid) result."""
    runs = folder / "runs"
    shutil.copytree(WORLD["runs"], runs)
    digits = runs / "smoke" / "digits"
    (digits / "fvsbn" / "seed-0").mkdir(parents=True)
    result = json.loads((digits / "real-data" / "seed-0" / "result.json").read_text())
    assert result["method"] == "real-data"
    shutil.copy(digits / "real-data" / "seed-0" / "result.json", digits / "fvsbn" / "seed-0")
    return ["--out", str(runs)]


def _corrupt_only(folder: Path) -> list[str]:
    """A results folder whose only result is binary garbage: nothing valid to report."""
    run_dir = folder / "runs" / "smoke" / "digits" / "vae" / "seed-0"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_bytes(b"\x00\xff garbage" * 10)
    return ["--runs", str(folder / "runs"), "--out", str(folder / "reports")]


def _expected(text: str | bytes) -> Setup:
    def setup(folder: Path) -> list[str]:
        path = folder / "expected.csv"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return [str(path), "{runs}/smoke/digits"]

    return setup


HEADER = "method,metric,value,tolerance,direction\n"
ROW = "real-data,fid,5.26,2.0,lower\n"

CASES: list[Any] = [
    # unknown names
    _case("methods-unknown", [*RUN, "--methods", "glw"], "unknown method 'glw'"),
    _case("methods-one-unknown", [*RUN, "--methods", "glow,nope"], "unknown method 'nope'"),
    _case("methods-empty", [*RUN, "--methods", ""], "empty list of methods"),
    _case("methods-blank", [*RUN, "--methods", " , "], "empty list of methods"),
    _case("methods-comma", [*RUN, "--methods", ","], "empty list of methods"),
    _case("methods-family-unknown", [*RUN, "--methods", "family:nope"], "unknown method family"),
    _case("methods-family-empty", [*RUN, "--methods", "family:"], "unknown method family"),
    _case("methods-newline", [*RUN, "--methods", "glow\nvae"], "unknown method"),
    _case("sweep-methods-empty", ["sweep", *STUDY, "--methods", ""], "empty list of methods"),
    _case("dataset-unknown", [*ONE, "--dataset", "digitz"], "unknown dataset 'digitz'"),
    _case("dataset-traversal", [*ONE, "--dataset", "../x"], "unknown dataset"),
    _case("protocol-unknown", ["run", "--protocol", "quik", "--out", "{runs}"], "'quick'"),
    _case("protocol-missing-file", ["run", "--protocol", "{scratch}/no.toml"], "does not exist"),
    _case("protocol-folder", ["run", "--protocol", "{scratch}/folder.toml"], "is not a file"),
    _case("extractor-unknown", [*ONE, "--extractor", "inception"], "feature extractor"),
    _case("extractor-wrong-dataset", [*ONE, "--extractor", "mnist-cnn"], "mnist-cnn"),
    _case("train-method-unknown", ["train", *STUDY, "--method", "nope"], "unknown method"),
    _case("train-method-missing", ["train", *STUDY], "--method"),
    _case("list-unknown", ["list", "bogus"], "invalid choice"),
    _case("command-unknown", ["frobnicate"], "invalid choice"),
    _case("option-unknown", [*ONE, "--bogus"], "unrecognized arguments"),
    # --set syntax
    _case("set-no-equals", [*ONE, "--set", "lr"], "expects key=value"),
    _case("set-no-key", [*ONE, "--set", "=5"], "expects key=value"),
    _case("set-blank-key", [*ONE, "--set", "  =5"], "expects key=value"),
    _case("set-train-empty-key", [*ONE, "--set", "train.=5"], "unknown train setting"),
    _case("set-method-not-in-study", [*ONE, "--set", "glow.lr=0.1"], "not in this study"),
    _case("set-section-unknown", [*ONE, "--set", "model.lr=0.1"], "not in this study"),
    _case("set-bare-unknown", [*ONE, "--set", "bogus=1"], "no selected method"),
    _case("set-bare-lr-not-owned", [*ONE, "--set", "lr=1"], "no selected method"),
    _case("set-train-unknown", [*ONE, "--set", "train.epochs=3"], "unknown train setting"),
    _case("set-eval-unknown", [*ONE, "--set", "eval.fid=3"], "unknown eval setting"),
    _case("set-eval-typo", [*ONE, "--set", "eval.knn_temp=1"], "Did you mean"),
    _case("set-method-unknown-key", [*RUN, "--methods", "glow", "--set", "glow.lrr=1"], "'lrr'"),
    # protocol settings through --set: types and ranges
    *[
        _case(f"set-{key}={value}", [*ONE, "--set", f"{key}={value}"], match)
        for key, value, match in [
            ("train.budget_images", "-1", "at least 0"),
            ("train.budget_images", "-64", "at least 0"),
            ("train.budget_images", "abc", "integer"),
            ("train.budget_images", "1.5", "integer"),
            ("train.budget_images", "nan", "integer"),
            ("train.budget_images", "1e3", "integer"),
            ("train.budget_images", "", "integer"),
            ("train.budget_images", "99999999999999999999999", "too large"),
            ("train.batch_size", "0", "at least 1"),
            ("train.batch_size", "-1", "at least 1"),
            ("train.batch_size", "abc", "integer"),
            ("train.batch_size", "64,64", "integer"),
            ("train.checkpoint_every_images", "-1", "at least 0"),
            ("train.throughput_warmup_steps", "-3", "at least 0"),
            ("eval.fid_samples", "1", "at least 2"),
            ("eval.fid_samples", "0", "at least 2"),
            ("eval.kid_subset_size", "1", "at least 2"),
            ("eval.kid_subsets", "0", "at least 1"),
            ("eval.prc_neighborhood", "0", "at least 1"),
            ("eval.sample_batch_size", "0", "at least 1"),
            ("eval.eval_batch_size", "-5", "at least 1"),
            ("eval.probe_val_fraction", "5", r"\(0, 1\)"),
            ("eval.probe_val_fraction", "0", r"\(0, 1\)"),
            ("eval.probe_val_fraction", "1", r"\(0, 1\)"),
            ("eval.probe_val_fraction", "-0.1", r"\(0, 1\)"),
            ("eval.probe_val_fraction", "nan", "finite"),
            ("eval.probe_val_fraction", "abc", "number"),
            ("eval.probe_c_grid", "0", "> 0"),
            ("eval.probe_c_grid", "-1,1", "> 0"),
            ("eval.probe_c_grid", "1,nan", "finite"),
            ("eval.probe_c_grid", "1,inf", "finite"),
            ("eval.probe_c_grid", "abc", "list of numbers"),
            ("eval.probe_c_grid", ",", "must not be empty"),
            ("eval.probe_max_iter", "0", "at least 1"),
            ("eval.knn_k", "0", "at least 1"),
            ("eval.knn_temperature", "0", "> 0"),
            ("eval.knn_temperature", "-0.07", "> 0"),
            ("eval.knn_temperature", "nan", "finite"),
            ("eval.knn_temperature", "inf", "finite"),
            ("eval.knn_temperature", "1e999", "finite"),
            ("eval.throughput_sample_batch", "0", "at least 1"),
        ]
    ],
    # hyper-parameters: types, finiteness, ranges, choices (plus one per method below)
    *[
        _case(f"hp-{item}", [*RUN, "--methods", item.split(".")[0], "--set", item], match)
        for item, match in [
            ("glow.lr=-1", "glow.lr: must be > 0"),
            ("glow.lr=0", "glow.lr: must be > 0"),
            ("glow.lr=nan", "glow.lr: must be finite"),
            ("glow.lr=inf", "glow.lr: must be finite"),
            ("glow.lr=-inf", "glow.lr: must be finite"),
            ("glow.lr=1,2", "glow.lr: expected a number"),
            ("glow.lr=fast", "glow.lr: expected a number"),
            ("glow.width=0", "glow.width: must be >= 1"),
            ("glow.width=1.5", "glow.width: expected an integer"),
            ("glow.width=99999999999999999999999", "glow.width: too large"),
            ("glow.coupling=banana", "Valid: affine, additive"),
            ("glow.max_grad_norm=-1", "glow.max_grad_norm: must be >= 0"),
            ("made.hidden_sizes=", "made.hidden_sizes: must not be empty"),
            ("made.hidden_sizes=64,0", "made.hidden_sizes: must be >= 1"),
            ("made.hidden_sizes=a,b", "made.hidden_sizes: expected an integer"),
            ("made.direct_connection=maybe", "expected true or false"),
            ("made.order=zigzag", "Valid: natural, random"),
            ("ddpm.ema=1", r"ddpm.ema: must be in \[0, 1\)"),
            ("ddpm.beta_T=2", r"ddpm.beta_T: must be in \(0, 1\)"),
            ("ddpm.width_mults=1,0", "ddpm.width_mults: must be >= 1"),
            ("ddpm.dropout=1", r"ddpm.dropout: must be in \[0, 1\)"),
            ("ddpm.variance=medium", "Valid: large, small"),
            ("vae.latent_dim=-4", "vae.latent_dim: must be >= 1"),
            ("mae.mask_ratio=1", r"mae.mask_ratio: must be in \(0, 1\)"),
            ("simclr.crop_scale=0,1", r"simclr.crop_scale: must be in \(0, 1\]"),
            ("wgan.clip_value=0", "wgan.clip_value: must be > 0"),
            ("gan.adam_beta1=1", r"gan.adam_beta1: must be in \[0, 1\)"),
            ("vq-vae.prior_fraction=1", r"vq-vae.prior_fraction: must be in \(0, 1\)"),
            ("pixelcnn.output=gaussian", "Valid: categorical, logistic_mixture"),
            ("flow-matching.samplers=", "flow-matching.samplers: must not be empty"),
            # only the network can say: the trial build before any run
            ("mae.heads=3", "width 64 must be divisible by mae.heads 3"),
            ("cpc.directions=3", "directions must be 1, 2 or 4"),
            ("simclr.crop_scale=0.5", "crop_scale"),
            ("flow-matching.samplers=rk4:5", "flow-matching"),
            ("dim.local_stage=9", "local_stage"),
            ("vqgan.perceptual_weights={scratch}/missing.pt", "perceptual_weights"),
            ("vqgan.perceptual_weights={scratch}/garbage.bin", "vqgan"),
        ]
    ],
    _case(
        "hp-bare-nan-to-every-owner",
        [*RUN, "--methods", "glow,nice", "--set", "lr=nan"],
        r"\.lr: must be finite",
    ),
    *_method_cases(),
    # protocol files
    *[
        _case(f"protocol-{case_id}", [*PROTOCOL_RUN], match, _protocol(text))
        for case_id, text, match in PROTOCOL_CASES
    ],
    # seeds
    *[
        _case(f"seeds-{case_id}", [*ONE, "--seeds", value], match)
        for case_id, value, match in [
            ("empty", "", "--seeds is empty"),
            ("blank", "  ", "--seeds is empty"),
            ("letters", "abc", "comma-separated integers"),
            ("negative", "-1", r"not in \[0, 2\*\*31\)"),
            ("huge", "99999999999999999999999", r"not in \[0, 2\*\*31\)"),
            ("2**31", "2147483648", r"not in \[0, 2\*\*31\)"),
            ("duplicate", "0,1,0", "listed twice"),
            ("float", "1.5", "comma-separated integers"),
            ("double-comma", "0,,1", "comma-separated integers"),
            ("trailing-comma", "0,", "comma-separated integers"),
            ("semicolon", "0;1", "comma-separated integers"),
            ("hex", "0x1", "comma-separated integers"),
        ]
    ],
    _case("sweep-seeds-empty", ["sweep", *STUDY, "--seeds", ""], "--seeds is empty"),
    _case("train-seed-negative", ["train", *STUDY, "--method", "vae", "--seed", "-1"], "--seed"),
    _case("train-seed-letters", ["train", *STUDY, "--method", "vae", "--seed", "abc"], "--seed"),
    _case("train-seed-list", ["train", *STUDY, "--method", "vae", "--seed", "1,2"], "--seed"),
    # device and precision (checked before the data loads)
    _case("device-unknown", [*ONE, "--device", "tpu"], "unknown device 'tpu'"),
    _case("device-empty", [*ONE, "--device", ""], "unknown device"),
    _case("device-cuda-garbage", [*ONE, "--device", "cuda:x"], "device"),
    _case("device-upper", [*ONE, "--device", "CPU"], "unknown device"),
    _case("precision-fp16", [*ONE, "--precision", "fp16"], "unknown precision 'fp16'"),
    _case("precision-empty", [*ONE, "--precision", ""], "unknown precision"),
    _case("precision-upper", [*ONE, "--precision", "FP32"], "unknown precision"),
    _case(
        "precision-before-data",
        [*ONE, "--precision", "int8", "--dataset", "mnist", "--data-root", "{scratch}/nothing"],
        "unknown precision",
    ),
    # feature weights
    _case("weights-missing", [*ONE, "--feature-weights", "{scratch}/none.pt"], "feature-weights"),
    _case("weights-folder", [*ONE, "--feature-weights", "{scratch}"], "feature-weights"),
    _case("weights-garbage", [*ONE, "--feature-weights", "{scratch}/garbage.bin"], "weights"),
    _case("weights-empty", [*ONE, "--feature-weights", "{scratch}/empty"], "weights"),
    # output and data folders
    _case("out-is-file", ["run", "--protocol", "smoke", "--out", "{scratch}/a-file"], "--out"),
    _case("out-under-file", ["run", "--protocol", "smoke", "--out", "{scratch}/a-file/x"], "--out"),
    _case(
        "sweep-out-is-file",
        ["sweep", "--protocol", "smoke", "--out", "{scratch}/a-file"],
        "--out",
    ),
    _case(
        "data-root-missing-no-download",
        [*ONE, "--dataset", "mnist", "--data-root", "{scratch}/nothing", "--no-download"],
        "mnist",
    ),
    _case(
        "data-root-file-no-download",
        [*ONE, "--dataset", "cifar10", "--data-root", "{scratch}/a-file", "--no-download"],
        "cifar",
    ),
    # sweep options
    _case("workers-zero", ["sweep", *STUDY, "--workers", "0"], "--workers"),
    _case("workers-negative", ["sweep", *STUDY, "--workers", "-2"], "--workers"),
    _case("workers-letters", ["sweep", *STUDY, "--workers", "many"], "--workers"),
    _case("workers-huge", ["sweep", *STUDY, "--workers", "99999999999999999999"], "--workers"),
    _case("workers-zero-local", ["sweep", *STUDY, "--executor", "local", "--workers", "0"], "work"),
    _case("slurm-gpus-zero", ["sweep", *STUDY, "--slurm-gpus", "0"], "--slurm-gpus"),
    _case("timeout-zero", ["sweep", *STUDY, "--timeout-min", "0"], "--timeout-min"),
    _case("executor-unknown", ["sweep", *STUDY, "--executor", "k8s"], "invalid choice"),
    # run folders holding another run's files
    _case(
        "checkpoint-of-another-run",
        ["run", "--protocol", "smoke", "--methods", "fvsbn", "--no-report"],
        "belongs to another run",
        _checkpoint_of_another_run,
    ),
    _case(
        "result-of-another-run",
        ["run", "--protocol", "smoke", "--methods", "fvsbn", "--no-report"],
        "belongs to another run",
        _result_of_another_run,
    ),
    # report
    _case("report-missing", ["report", "--runs", "{scratch}/nothing"], "does not exist"),
    _case("report-file", ["report", "--runs", "{scratch}/a-file"], "report|does not exist|folder"),
    _case(
        "report-protocol-unknown",
        ["report", "--runs", "{runs}", "--protocol", "quick", "--out", "{scratch}/rep"],
        "no results for protocol 'quick'",
    ),
    _case("report-only-corrupt", ["report"], "no valid result", _corrupt_only),
    # compare
    _case("compare-missing", ["compare", "{scratch}/none.csv", "{runs}/smoke/digits"], "exist"),
    _case("compare-folder", ["compare", "{scratch}", "{runs}/smoke/digits"], "expected"),
    _case("compare-results-missing", ["compare", "{scratch}/x.csv", "{scratch}/no"], "exist"),
    _case("compare-binary", ["compare"], "expected table", _expected(bytes(range(256)) * 8)),
    _case("compare-empty", ["compare"], "expected table", _expected(b"")),
    _case("compare-no-rows", ["compare"], "no rows", _expected(HEADER)),
    _case(
        "compare-missing-column",
        ["compare"],
        "lacks column 'tolerance'",
        _expected("method,metric,value,direction\nreal-data,fid,5.26,lower\n"),
    ),
    _case("compare-duplicate", ["compare"], "duplicate|twice", _expected(HEADER + ROW + ROW)),
    _case(
        "compare-conflict",
        ["compare"],
        "duplicate|twice",
        _expected(HEADER + ROW + "real-data,fid,9.0,2.0,lower\n"),
    ),
    _case(
        "compare-nan-value",
        ["compare"],
        "finite number",
        _expected(HEADER + "real-data,fid,nan,2.0,lower\n"),
    ),
    _case(
        "compare-inf-tolerance",
        ["compare"],
        "finite number",
        _expected(HEADER + "real-data,fid,5.26,inf,lower\n"),
    ),
    _case(
        "compare-text-value",
        ["compare"],
        "finite number",
        _expected(HEADER + "real-data,fid,low,2.0,lower\n"),
    ),
    _case(
        "compare-bad-direction",
        ["compare"],
        "direction",
        _expected(HEADER + "real-data,fid,5.26,2.0,sideways\n"),
    ),
    _case(
        "compare-negative-tolerance",
        ["compare"],
        "tolerance",
        _expected(HEADER + "real-data,fid,5.26,-2.0,lower\n"),
    ),
]


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # logging binds to the stderr of its first configuration: rebind it to this capture,
    # so that a log line (a run that started) shows up as a second line
    for handler in logging.root.handlers[:]:
        logging.root.removeHandler(handler)
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, match, setup", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    argv: list[str],
    match: str,
    setup: Setup | None,
    world: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    import re

    extra = setup(tmp_path) if setup else []
    fill = {"runs": str(world["runs"]), "scratch": str(world["scratch"])}
    argv = [a.format(**fill) for a in [*argv, *extra]]
    before, own = _snapshot(world["runs"]), _snapshot(tmp_path)
    code, err = _run_cli(argv, capsys)
    lines = err.splitlines()
    if request.node.callspec.id in WARNS:  # warnings naming each skipped file, then the error
        assert all("skipping result" in line for line in lines[:-1]), err
        lines = lines[-1:]
    assert code == 2, f"exit {code}, stderr: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].strip(), f"not one line: {err[-2000:]}"
    assert lines[0].startswith("genbench: error: "), lines[0]
    assert re.search(match, lines[0]), f"{match!r} not in {lines[0]!r}"
    assert _snapshot(world["runs"]) == before, "the runs folder changed"
    assert _snapshot(tmp_path) == own, "the case's own files changed"


def test_the_matrix_is_large_and_covers_every_method() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 150, len(ids)
    for name in METHODS.names():
        assert any(
            i.startswith(("range-", "nan-", "unknown-key-")) and f"-{name}." in i + "." for i in ids
        ), name
    assert not set(NEEDS_INTEGRATION) - set(ids), "xfail entries for cases that do not exist"


def test_report_skips_a_corrupt_result_beside_good_ones(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(world["runs"], runs)
    bad = runs / "smoke" / "digits" / "vae" / "seed-0" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"{ not json \x00")
    code, err = _run_cli(["report", "--runs", str(runs), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    assert "skipping result" in err and str(bad) in err, err
    board = (tmp_path / "rep" / "smoke-digits" / "leaderboard.md").read_text()
    assert "real-data" in board and "independent-pixels" in board


def test_list_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    for handler in logging.root.handlers[:]:
        logging.root.removeHandler(handler)
    capsys.readouterr()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "methods (capabilities):" in out and "protocols:" in out
    assert all(name in out for name in METHODS.names())


def test_a_good_case_passes_the_checks_that_bad_ones_fail(world: dict[str, Path]) -> None:
    """The harness can tell: the set-up study's own command is not an error (exit 0), and
    every value a case calls bad has a neighbour the schema accepts."""
    from bench.method import DataSpec

    spec = DataSpec("digits", 1, 8, 8, 17, 10)
    glow = METHODS.get("glow")
    assert glow.resolve_hparams(spec, {"lr": "0.001", "width": "8"})["width"] == 8
    assert math.isclose(glow.resolve_hparams(spec, {"lr": "1e-4"})["lr"], 1e-4)
