"""Property tests of the parsers a user's files and flags go through.

For any input, each parser either returns a valid value or raises one
:class:`~bench.errors.GenbenchError`: never another exception (a traceback), and never a
value that breaks the schema it was checked against. Inputs are arbitrary toml-like
documents, toml text and bytes, ``--set`` strings, and JSON result files -- both fully
random and single mutations of a valid document (which get past the first checks).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import GenbenchError
from bench.method import DataSpec, base_range, in_range
from bench.protocol import (
    MAX_SEED,
    SETTING_RANGES,
    Protocol,
    load_protocol,
    parse_protocol,
)
from bench.registry import METHODS
from bench.results import RunResult, load_result
from bench.runner import split_overrides

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC = DataSpec("digits", 1, 8, 8, 17, 10)

scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["0", "1", "nan", "inf", "-1", "1e999", "64", "0.5", "", ",", "a,b"]),
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _good_raw() -> dict[str, Any]:
    return {
        "name": "p",
        "version": 1,
        "description": "d",
        "dataset": "digits",
        "seeds": [0, 1],
        "train": {"budget_images": 64, "batch_size": 16},
        "eval": {"fid_samples": 100, "probe_c_grid": [0.1, 1.0]},
        "methods": {"glow": {"lr": 0.001}},
        "changelog": {"1": "x"},
    }


#: where a mutation can land in the good document: a top-level key, or a key of a table
PATHS = [
    *[(k,) for k in _good_raw()],
    ("bogus",),
    *[("train", k) for k in ("budget_images", "batch_size", "checkpoint_every_images", "x")],
    *[("eval", k) for k in SETTING_RANGES if k not in ("budget_images", "batch_size")],
    *[("methods", "glow", k) for k in ("lr", "width", "coupling", "levels", "nope")],
    ("methods", "made"),
    ("methods", "nope"),
    ("changelog", "1"),
]


@st.composite
def mutated_protocols(draw: st.DrawFn) -> dict[str, Any]:
    raw = _good_raw()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        table: Any = raw
        for key in path[:-1]:
            if not isinstance(table, dict):
                break
            table = table.setdefault(key, {})
        if isinstance(table, dict):
            if draw(st.booleans()) and path[-1] in table:
                del table[path[-1]]
            else:
                table[path[-1]] = draw(toml_values)
    return raw


def _check_protocol(protocol: Protocol) -> None:
    """What a parsed protocol guarantees to the rest of genbench."""
    assert isinstance(protocol.name, str) and "/" not in protocol.name and protocol.name[0] != "."
    assert protocol.seeds and all(0 <= s < MAX_SEED for s in protocol.seeds)
    assert len(set(protocol.seeds)) == len(protocol.seeds)
    for table in (protocol.train, protocol.eval):
        for key, value in vars(table).items():
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                assert not isinstance(v, bool) and math.isfinite(v), (key, v)
                assert in_range(v, SETTING_RANGES[key]), (key, v)
    assert str(protocol.version) in protocol.changelog


def _parse(raw: Any) -> None:
    try:
        protocol = parse_protocol(raw)
    except GenbenchError as exc:
        assert "\n" not in str(exc).strip()
        return
    _check_protocol(protocol)


@SETTINGS
@given(mutated_protocols())
def test_parse_protocol_on_mutated_documents(raw: dict[str, Any]) -> None:
    _parse(raw)


@SETTINGS
@given(st.one_of(toml_values, st.dictionaries(st.sampled_from(sorted(_good_raw())), toml_values)))
def test_parse_protocol_on_arbitrary_values(raw: Any) -> None:
    _parse(raw)


def test_the_good_document_parses() -> None:
    """The mutations start from a valid protocol: without this, every example would be
    rejected by the first check and the properties above would test nothing."""
    _check_protocol(parse_protocol(_good_raw()))


TOML_SNIPPETS = st.sampled_from(
    [
        'name = "p"\n',
        "version = 1\n",
        'description = "d"\n',
        'dataset = "digits"\n',
        "seeds = [0]\n",
        "[train]\nbudget_images = 64\n",
        "[eval]\n",
        '[changelog]\n1 = "x"\n',
        "[methods.glow]\nlr = nan\n",
        "budget_images = -1\n",
        "knn_temperature = inf\n",
        "[[train]]\n",
        "x = 1979-05-27T07:32:00Z\n",
        'seeds = [0, "a"]\n',
        "seeds = [99999999999999999999]\n",
    ]
)


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.lists(TOML_SNIPPETS, max_size=10).map("".join)))
def test_load_protocol_on_arbitrary_toml_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            protocol = load_protocol(path)
        except GenbenchError:
            return
        _check_protocol(protocol)


@SETTINGS
@given(st.binary(max_size=300))
def test_load_protocol_on_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.toml"
        path.write_bytes(data)
        try:
            _check_protocol(load_protocol(path))
        except GenbenchError:
            pass


# -- --set ---------------------------------------------------------------------------------
PROPERTY_METHODS = ["glow", "made", "ddpm", "simclr", "vq-vae", "gan", "independent-pixels"]
HPARAM_KEYS = sorted(
    {k for m in PROPERTY_METHODS for k in METHODS.get(m).default_hparams(SPEC)} | {"bogus"}
)
set_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["0", "1", "-1", "nan", "inf", "1e999", "0.5", "1,2", "[1, 2]", "", "true"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(str),
)
set_keys = st.one_of(
    st.text(max_size=15),
    st.sampled_from(HPARAM_KEYS),
    st.tuples(
        st.sampled_from(PROPERTY_METHODS + ["train", "eval", "x"]), st.sampled_from(HPARAM_KEYS)
    ).map(".".join),
    st.sampled_from([f"train.{k}" for k in ("budget_images", "batch_size")])
    | st.sampled_from([f"eval.{k}" for k in SETTING_RANGES]),
)


def _assert_schema(name: str, hparams: dict[str, Any]) -> None:
    cls = METHODS.get(name)
    defaults = cls.default_hparams(SPEC)
    assert set(hparams) == set(defaults)
    for key, value in hparams.items():
        default = defaults[key]
        if isinstance(default, (list, tuple)):
            assert type(value) is type(default)
            items, item_default = list(value), (default[0] if default else 0)
        else:
            items, item_default = [value], default
        bounds = cls.hparam_ranges[key] if key in cls.hparam_ranges else base_range(key, default)
        for item in items:
            if isinstance(item_default, bool):
                assert type(item) is bool
            elif isinstance(item_default, int):
                assert type(item) is int
            elif isinstance(item_default, float):
                assert type(item) is float and math.isfinite(item)
            elif isinstance(item_default, str):
                assert type(item) is str
            if bounds is not None and not isinstance(item, (bool, str)):
                assert in_range(item, bounds), (key, item, bounds)
        if key in cls.hparam_choices:
            assert all(item in cls.hparam_choices[key] for item in items)
    assert cls.resolve_hparams(SPEC, hparams) == hparams  # idempotent on its own output


@SETTINGS
@given(
    st.lists(st.tuples(set_keys, set_values), min_size=1, max_size=3),
    st.lists(st.sampled_from(PROPERTY_METHODS), min_size=1, max_size=3, unique=True),
)
def test_set_parsing_gives_valid_values_or_one_error(
    items: list[tuple[str, str]], methods: list[str]
) -> None:
    sets = [f"{key}={value}" for key, value in items]
    try:
        protocol_sets, method_sets = split_overrides(sets, methods)
        resolved = {m: METHODS.get(m).resolve_hparams(SPEC, method_sets[m]) for m in methods}
        protocol = load_protocol("smoke").with_overrides(protocol_sets)
    except GenbenchError as exc:
        assert "\n" not in str(exc).strip()
        return
    for name, hparams in resolved.items():
        _assert_schema(name, hparams)
    _check_protocol(protocol)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_accepts_its_defaults_as_set_strings(name: str) -> None:
    """The --set round trip: each default written as a --set string parses back to itself
    (a schema that rejects its own defaults' text would make them impossible to restate)."""
    cls = METHODS.get(name)
    defaults = cls.default_hparams(SPEC)
    texts = {
        k: ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
        for k, v in defaults.items()
    }
    texts = {k: v for k, v in texts.items() if v or not isinstance(defaults[k], str)}
    resolved = cls.resolve_hparams(SPEC, texts)
    assert resolved == defaults


# -- results -------------------------------------------------------------------------------
GOOD_RESULT = json.loads((Path(__file__).parent / "data" / "results" / "v1.json").read_text())
RESULT_KEYS = sorted(GOOD_RESULT) + ["bogus"]


@st.composite
def mutated_results(draw: st.DrawFn) -> Any:
    raw = copy.deepcopy(GOOD_RESULT)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(RESULT_KEYS))
        target: Any = raw
        if isinstance(raw.get(key), dict) and raw[key] and draw(st.booleans()):
            target, key = raw[key], draw(st.sampled_from(sorted(raw[key])))
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(toml_values)
    return raw


def _load(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "result.json"
        path.write_bytes(data)
        try:
            result = load_result(path)
        except GenbenchError as exc:
            assert "\n" not in str(exc).strip()
            return
        assert isinstance(result, RunResult)


def _dumps(raw: Any) -> bytes:
    return json.dumps(raw, allow_nan=True, default=str).encode()


def test_the_good_result_loads() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "result.json"
        path.write_bytes(_dumps(GOOD_RESULT))
        assert isinstance(load_result(path), RunResult)


@SETTINGS
@given(mutated_results())
def test_load_result_on_mutated_results(raw: Any) -> None:
    _load(_dumps(raw))


@SETTINGS
@given(st.one_of(toml_values.map(_dumps), st.binary(max_size=200)))
def test_load_result_on_arbitrary_json_and_bytes(data: bytes) -> None:
    _load(data)
