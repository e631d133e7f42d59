"""Throughput gate: compare two pytest-benchmark JSON files as ratios to a reference step.

Why ratios: the machines that run benchmarks are shared and noisy; a whole run may be 2x
slower because of a neighbour, which says nothing about our code. Each file's benchmarks are
therefore divided by the median of a reference benchmark measured in the same run
(``tests/benchmarks/test_bench_reference.py::test_reference_step``, a fixed small conv +
matmul step that no code of ours touches). A benchmark fails when its ratio grew by more than
``--max-slowdown`` (default 0.15, i.e. 15%) against the baseline file's ratio. A benchmark of
the baseline that is missing from the current file fails too (coverage lost); new ones are
listed.

    python tools/bench_gate.py BASELINE.json CURRENT.json [--max-slowdown 0.15]
        [--reference test_reference_step]

Files come from ``pytest tests/benchmarks --benchmark-json=PATH`` (or ``--benchmark-save``,
under ``.benchmarks/``); ``tox -e bench-baseline`` then ``tox -e bench`` run the whole recipe
(docs/GATE.md). Exit 0: no slowdown; 1: a slowdown or a lost benchmark; 2: unreadable input.
Standard library only, so it runs wherever the JSON files are.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REFERENCE = "test_reference_step"


class GateError(Exception):
    """Unreadable or inconsistent input: one line on stderr, exit 2."""


@dataclass(frozen=True)
class Verdict:
    name: str
    baseline_ratio: float | None
    current_ratio: float | None
    #: current_ratio / baseline_ratio - 1 (positive: slower relative to the reference)
    slowdown: float | None
    verdict: str  # ok | slower | faster | missing | new


def load_medians(path: Path) -> dict[str, float]:
    """{benchmark fullname: median seconds} from a pytest-benchmark JSON file."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateError(f"cannot read benchmark file {path}: {exc}") from None
    benchmarks = raw.get("benchmarks") if isinstance(raw, dict) else None
    if not isinstance(benchmarks, list) or not benchmarks:
        raise GateError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    medians: dict[str, float] = {}
    for entry in benchmarks:
        try:
            name = str(entry.get("fullname") or entry["name"])
            median = float(entry["stats"]["median"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise GateError(f"{path}: a benchmark entry lacks a name or stats.median") from None
        if not math.isfinite(median) or median <= 0:
            raise GateError(f"{path}: {name} has median {median!r}; expected a positive time")
        if name in medians:
            raise GateError(f"{path}: benchmark {name} appears twice")
        medians[name] = median
    return medians


def find_reference(medians: dict[str, float], reference: str, path: Path) -> str:
    """The one benchmark whose name (after the last '::') is ``reference``."""
    matches = [n for n in medians if n == reference or n.rsplit("::", 1)[-1] == reference]
    if len(matches) != 1:
        raise GateError(
            f"{path}: {'no' if not matches else 'several'} reference benchmark {reference!r} "
            f"(run tests/benchmarks/test_bench_reference.py in the same session)"
        )
    return matches[0]


def ratios(medians: dict[str, float], reference: str, path: Path) -> dict[str, float]:
    """Each benchmark's median divided by the reference's median in the same file."""
    ref = medians[find_reference(medians, reference, path)]
    return {name: median / ref for name, median in medians.items()}


def gate(
    baseline: dict[str, float],
    current: dict[str, float],
    max_slowdown: float = 0.15,
    reference: str = REFERENCE,
    baseline_path: Path = Path("baseline"),
    current_path: Path = Path("current"),
) -> list[Verdict]:
    """A verdict per benchmark of either file (the reference itself is left out)."""
    if not math.isfinite(max_slowdown) or max_slowdown <= 0:
        raise GateError(f"--max-slowdown must be a positive fraction, got {max_slowdown!r}")
    ref_name = find_reference(baseline, reference, baseline_path)
    find_reference(current, reference, current_path)
    before = ratios(baseline, reference, baseline_path)
    after = ratios(current, reference, current_path)
    verdicts = []
    for name in sorted(set(before) | set(after)):
        if name == ref_name or name.rsplit("::", 1)[-1] == reference:
            continue
        if name not in after:
            verdicts.append(Verdict(name, before[name], None, None, "missing"))
            continue
        if name not in before:
            verdicts.append(Verdict(name, None, after[name], None, "new"))
            continue
        slowdown = after[name] / before[name] - 1.0
        verdict = (
            "slower" if slowdown > max_slowdown else "faster" if slowdown < -max_slowdown else "ok"
        )
        verdicts.append(Verdict(name, before[name], after[name], slowdown, verdict))
    return verdicts


def failed(verdicts: list[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.verdict in ("slower", "missing")]


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("current", type=Path)
    parser.add_argument("--max-slowdown", type=float, default=0.15)
    parser.add_argument("--reference", default=REFERENCE)
    args = parser.parse_args(argv)
    try:
        verdicts = gate(
            load_medians(args.baseline),
            load_medians(args.current),
            args.max_slowdown,
            args.reference,
            args.baseline,
            args.current,
        )
    except GateError as exc:
        print(f"bench_gate: error: {exc}", file=sys.stderr)
        return 2
    print("| benchmark | baseline ratio | current ratio | change | verdict |")
    print("| --- | ---: | ---: | ---: | --- |")
    for v in verdicts:
        print(
            f"| {v.name} | {_fmt(v.baseline_ratio, '.4g')} | {_fmt(v.current_ratio, '.4g')} "
            f"| {_fmt(v.slowdown, '+.1%')} | {v.verdict} |"
        )
    bad = failed(verdicts)
    if bad:
        print(
            f"THROUGHPUT REGRESSION: {len(bad)} benchmark(s) slower than the reference step "
            f"by more than {args.max_slowdown:.0%} or missing"
        )
        return 1
    print(f"no throughput regression ({len(verdicts)} benchmarks, ratios to {args.reference})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
