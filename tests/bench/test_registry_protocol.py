from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import GenbenchError
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
        (lambda r: r["train"].update(budget_images=-5), "non-negative integer"),
        (lambda r: r["eval"].update(fid_samples="many"), "fid_samples must be int"),
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
