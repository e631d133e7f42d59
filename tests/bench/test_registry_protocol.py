from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import GenbenchError
from bench.method import DataSpec
from bench.protocol import load_protocol, parse_protocol, protocol_names
from bench.registry import DATASETS, EXTRACTORS, METHODS, method_families, parse_names


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(GenbenchError, match="Did you mean 'real-data'") as info:
        METHODS.get("real-dta")
    assert "Valid methods:" in str(info.value)
    with pytest.raises(GenbenchError, match="'digits'"):
        DATASETS.get("digit")
    with pytest.raises(GenbenchError, match="unknown protocol 'quik'.*'quick'"):
        load_protocol("quik")
    with pytest.raises(GenbenchError, match="feature extractor"):
        EXTRACTORS.get("inception")


def test_method_families_expand_in_method_lists() -> None:
    families = method_families()
    assert families["reference"] == [
        "independent-pixels",
        "random-encoder",
        "raw-pixels",
        "real-data",
        "supervised",
    ]
    assert sorted(n for names in families.values() for n in names) == METHODS.names()
    names = parse_names("method", "supervised, family:reference,gan", METHODS)
    assert names == ["supervised", *[n for n in families["reference"] if n != "supervised"], "gan"]
    with pytest.raises(GenbenchError, match="unknown method family 'refrence'.*reference"):
        parse_names("method", "family:refrence", METHODS)
    with pytest.raises(GenbenchError, match="empty list"):
        parse_names("method", " , ", METHODS)


def test_every_method_declares_valid_capabilities() -> None:
    from bench.method import CAPABILITIES, Method

    for name in METHODS.names():
        cls = METHODS.get(name)
        assert issubclass(cls, Method) and cls.name == name
        assert cls.capabilities and set(cls.capabilities) <= set(CAPABILITIES), name


@pytest.mark.parametrize("name", protocol_names())
def test_shipped_protocols_load(name: str) -> None:
    protocol = load_protocol(name)
    assert protocol.name == name
    assert str(protocol.version) in protocol.changelog
    assert protocol.dataset in DATASETS
    assert protocol.train.budget_images > 0


def test_required_protocols_exist() -> None:
    assert {"smoke", "quick", "standard", "paper"} <= set(protocol_names())


def _raw() -> dict:
    return {
        "name": "t",
        "version": 1,
        "description": "d",
        "dataset": "digits",
        "seeds": [0],
        "train": {"budget_images": 10},
        "eval": {},
        "changelog": {"1": "x"},
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("seeds"), "missing key 'seeds'"),
        (lambda r: r.update(bogus=1), "bogus"),
        (lambda r: r["train"].update(budget_imgs=1), "Did you mean 'budget_images'"),
        (lambda r: r["train"].update(budget_images=-5), "budget_images must be at least 0"),
        (lambda r: r["eval"].update(fid_samples="many"), "fid_samples must be an integer"),
        (
            lambda r: r["eval"].update(probe_val_fraction=5),
            r"probe_val_fraction must be in \(0, 1\)",
        ),
        (
            lambda r: r["eval"].update(probe_val_fraction=0),
            r"probe_val_fraction must be in \(0, 1\)",
        ),
        (
            lambda r: r["eval"].update(knn_temperature=float("nan")),
            "knn_temperature must be finite",
        ),
        (lambda r: r["eval"].update(knn_temperature=0.0), "knn_temperature must be > 0"),
        (lambda r: r["eval"].update(probe_c_grid=[1.0, -1.0]), "probe_c_grid must be > 0"),
        (lambda r: r["eval"].update(probe_c_grid=[float("inf")]), "probe_c_grid must be finite"),
        (lambda r: r["eval"].update(probe_c_grid=[True]), "probe_c_grid must be a list of numbers"),
        (lambda r: r["eval"].update(probe_c_grid=5), "probe_c_grid must be a list"),
        (lambda r: r["train"].update(batch_size=0), "batch_size must be at least 1"),
        (lambda r: r["train"].update(batch_size=2.0), "batch_size must be an integer"),
        (lambda r: r["train"].update(batch_size=True), "batch_size must be an integer"),
        (lambda r: r["train"].update(budget_images=10**30), "budget_images .* too large"),
        (lambda r: r["train"].update(checkpoint_every_images=-1), "checkpoint_every_images"),
        (lambda r: r.update(seeds=[0, 0]), "listed twice"),
        (lambda r: r.update(seeds=[-1]), r"not in \[0, 2\*\*31\)"),
        (lambda r: r.update(seeds=[2**31]), r"not in \[0, 2\*\*31\)"),
        (lambda r: r.update(seeds=[True]), "non-empty list of integers"),
        (lambda r: r.update(seeds="0"), "non-empty list of integers"),
        (lambda r: r.update(version=True), "positive integer"),
        (lambda r: r.update(name="../x"), "name '../x' must be"),
        (lambda r: r.update(dataset=5), "dataset must be a string"),
        (lambda r: r.update(changelog=5), r"\[changelog\]"),
        (lambda r: r.update(changelog={"1": 5}), r"\[changelog\]"),
        (lambda r: r.update(train=[1]), r"\[train\] must be a table"),
        (lambda r: r.update(methods={"glw": {}}), "unknown method 'glw'.*'glow'"),
        (lambda r: r.update(methods={"glow": {"lr": [1, 2]}}), r"methods.glow.*expected a number"),
        (lambda r: r.update(methods={"glow": {"lr": float("nan")}}), "must be finite"),
        (lambda r: r.update(methods={"glow": {"widht": 3}}), "no hyper-parameter 'widht'"),
        (lambda r: r.update(methods={"glow": 3}), "must hold key = value"),
        (lambda r: r["eval"].update(probe_c_grid=["a"]), "list of numbers"),
        (lambda r: r.update(version=2), "no line for version 2"),
        (lambda r: r.update(seeds=[]), "non-empty list"),
        (lambda r: r["train"].pop("budget_images"), "missing setting 'budget_images'"),
    ],
)
def test_protocol_validation(mutate, message: str) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(GenbenchError, match=message):
        parse_protocol(raw)


def test_malformed_toml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[train\n")
    with pytest.raises(GenbenchError, match="malformed protocol file"):
        load_protocol(bad)


def test_overrides_are_typed_and_validated() -> None:
    protocol = load_protocol("smoke").with_overrides({"train.budget_images": "128"})
    assert protocol.train.budget_images == 128
    with pytest.raises(GenbenchError, match="budget_images"):
        load_protocol("smoke").with_overrides({"train.budget_image": "1"})


def test_protocol_parser_rejects_non_tables_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(GenbenchError, match="must be a table of keys"):
        parse_protocol([1, 2])  # type: ignore[arg-type]
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(GenbenchError, match="not UTF-8"):
        load_protocol(binary)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(GenbenchError, match="is not a file"):
        load_protocol(folder)


def test_overrides_are_range_checked() -> None:
    smoke = load_protocol("smoke")
    assert smoke.with_overrides({"train.budget_images": "0"}).train.budget_images == 0
    for key, value, message in [
        ("eval.probe_val_fraction", "5", r"in \(0, 1\)"),
        ("eval.knn_temperature", "inf", "finite"),
        ("eval.knn_temperature", "nan", "finite"),
        ("eval.probe_c_grid", "0.1,0", "> 0"),
        ("eval.probe_c_grid", ",", "must not be empty"),
        ("train.batch_size", "99999999999999999999999", "too large"),
        ("train.budget_images", "-64", "must be at least 0"),
        ("train.budget_images", "1.5", "must be an integer"),
    ]:
        with pytest.raises(GenbenchError, match=message):
            smoke.with_overrides({key: value})


# -- hyper-parameter schema -------------------------------------------------------------
SPECS = [DataSpec("digits", 1, 8, 8, 17, 10), DataSpec("mnist", 1, 28, 28, 256, 10)]
SPECS.append(DataSpec("cifar10", 3, 32, 32, 256, 10))


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_default_passes_its_schema_and_builds(name: str) -> None:
    """The audit of the declared ranges: each method's documented defaults, at every data
    scale, satisfy its schema and build (on the meta device) -- a range that rejects a
    default, or a default that cannot be built (pixelcnn's 32x32 width once), fails here."""
    cls = METHODS.get(name)
    for spec in SPECS:
        defaults = cls.default_hparams(spec)
        assert cls.resolve_hparams(spec, {}) == defaults
        cls.validate(spec, defaults)


def test_every_protocol_method_table_passes_the_schema() -> None:
    for name in protocol_names():
        protocol = load_protocol(name)
        for method, table in protocol.methods.items():
            METHODS.get(method).validate(SPECS[0], table)


def _numeric_keys(name: str) -> list[str]:
    defaults = METHODS.get(name).default_hparams(SPECS[0])
    return [
        k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_numeric_hparam_rejects_nan_strings_lists_and_bools(name: str) -> None:
    cls = METHODS.get(name)
    for key in _numeric_keys(name):
        for bad in ("nan", "inf", "-inf", "abc", [1, 2], True, None, "1e999"):
            if isinstance(cls.default_hparams(SPECS[0])[key], int) and bad in ("nan", "-inf"):
                bad = "1.5"  # an int's parse error, not a float's finiteness
            with pytest.raises(GenbenchError, match=f"for {name}.{key}"):
                cls.resolve_hparams(SPECS[0], {key: bad})


@pytest.mark.parametrize("name", METHODS.names())
def test_every_ranged_hparam_rejects_values_just_outside(name: str) -> None:
    """For each numeric hyper-parameter with a range: the bound itself is accepted when
    closed and rejected when open; a value beyond it is rejected."""
    from bench.method import base_range

    cls = METHODS.get(name)
    defaults = cls.default_hparams(SPECS[0])
    checked = 0
    for key in _numeric_keys(name):
        bounds = (
            cls.hparam_ranges[key] if key in cls.hparam_ranges else base_range(key, defaults[key])
        )
        if bounds is None:
            continue
        lo, hi = bounds[0], bounds[1]
        brackets = bounds[2] if len(bounds) > 2 else "[]"
        step = 1 if isinstance(defaults[key], int) else 1e-3
        if lo is not None:
            with pytest.raises(GenbenchError, match=f"for {name}.{key}: must be"):
                cls.resolve_hparams(SPECS[0], {key: str(lo - step)})
            if brackets[0] == "(":
                with pytest.raises(GenbenchError, match=f"for {name}.{key}: must be"):
                    cls.resolve_hparams(SPECS[0], {key: str(lo)})
            checked += 1
        if hi is not None:
            with pytest.raises(GenbenchError, match=f"for {name}.{key}: must be"):
                cls.resolve_hparams(SPECS[0], {key: str(hi + step)})
            if brackets[1] == ")":
                with pytest.raises(GenbenchError, match=f"for {name}.{key}: must be"):
                    cls.resolve_hparams(SPECS[0], {key: str(hi)})
    if _numeric_keys(name) and name != "independent-pixels":
        assert checked, f"{name}: no numeric hyper-parameter has a range"


def test_schema_types_follow_the_default() -> None:
    glow, made, ddpm = METHODS.get("glow"), METHODS.get("made"), METHODS.get("ddpm")
    spec = SPECS[0]
    assert glow.resolve_hparams(spec, {"lr": 1})["lr"] == 1.0  # an int where a float goes
    assert isinstance(glow.resolve_hparams(spec, {"lr": 1})["lr"], float)
    assert glow.resolve_hparams(spec, {"width": " 32 "})["width"] == 32
    with pytest.raises(GenbenchError, match="expected an integer"):
        glow.resolve_hparams(spec, {"width": 32.0})
    with pytest.raises(GenbenchError, match="expected an integer"):
        glow.resolve_hparams(spec, {"width": True})  # a bool is not an int
    assert made.resolve_hparams(spec, {"direct_connection": "yes"})["direct_connection"] is True
    with pytest.raises(GenbenchError, match="expected true or false"):
        made.resolve_hparams(spec, {"direct_connection": 1})
    assert made.resolve_hparams(spec, {"hidden_sizes": "[32, 16]"})["hidden_sizes"] == (32, 16)
    assert made.resolve_hparams(spec, {"hidden_sizes": [8]})["hidden_sizes"] == (8,)
    with pytest.raises(GenbenchError, match="must not be empty"):
        made.resolve_hparams(spec, {"hidden_sizes": ""})
    with pytest.raises(GenbenchError, match="expected a list"):
        made.resolve_hparams(spec, {"hidden_sizes": 8})
    assert ddpm.resolve_hparams(spec, {"attention_resolutions": ""})["attention_resolutions"] == []
    assert ddpm.resolve_hparams(spec, {"grad_clip": "0"})["grad_clip"] == 0.0  # 0: off
    with pytest.raises(GenbenchError, match="ddpm.beta_T: must be in"):
        ddpm.resolve_hparams(spec, {"beta_T": "1"})
    with pytest.raises(GenbenchError, match="too large"):
        glow.resolve_hparams(spec, {"width": "99999999999999999999999"})
    with pytest.raises(GenbenchError, match="expected a string"):
        glow.resolve_hparams(spec, {"coupling": 3})
    with pytest.raises(GenbenchError, match="Valid: affine, additive"):
        glow.resolve_hparams(spec, {"coupling": "banana"})
    with pytest.raises(GenbenchError, match="Valid: heun, euler|unknown sampler|flow-matching"):
        METHODS.get("flow-matching").validate(spec, {"samplers": "rk4:5"})


def test_validate_trial_build_turns_constructor_errors_into_one_line() -> None:
    spec = SPECS[0]
    with pytest.raises(GenbenchError) as info:  # the heads do not divide the width
        METHODS.get("mae").validate(spec, {"width": "30", "heads": "4"})
    message = str(info.value)
    assert "'mae'" in message and "width=30" in message and "heads=4" in message
    assert "\n" not in message
    with pytest.raises(GenbenchError, match="divisible"):
        METHODS.get("pixelcnn").validate(SPECS[2], {"width": "64"})
    with pytest.raises(GenbenchError, match="cpc.directions must be 1, 2 or 4"):
        METHODS.get("cpc").validate(spec, {"directions": "3"})
    with pytest.raises(GenbenchError, match="crop_scale"):
        METHODS.get("simclr").validate(spec, {"crop_scale": "0.5"})


def test_validate_is_cheap_and_leaves_the_global_rng_alone() -> None:
    import torch

    torch.manual_seed(123)
    before = torch.get_rng_state()
    # a width that would need tens of GB on the CPU: the meta device allocates nothing
    METHODS.get("glow").validate(SPECS[0], {"width": "60000"})
    METHODS.get("simclr").validate(SPECS[0], {})  # draws its augmentation seed
    assert torch.equal(torch.get_rng_state(), before)
