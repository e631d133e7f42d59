"""Prove the regression gate works: plant documented bugs one at a time and run the CI gate.

For each fault of ``tools/faults.toml`` (a file, an exact source snippet, its replacement, the
methods it affects and why it is a realistic bug) this script copies the repository's files
(``git ls-files``: tracked and untracked-but-not-ignored, i.e. the working tree under test)
to a scratch folder, applies the fault there (failing loudly unless the snippet occurs exactly
once, so the list stays valid as the code evolves), runs the smoke study of the fault's
methods with the scratch copy first on PYTHONPATH, and compares the results with
``reports/expected/smoke-digits.csv`` restricted to those methods, ``--strict`` (an
improvement beyond tolerance is as suspicious as a regression: test leakage looks like one).
An unmodified copy runs first as the control: it must pass, or every "caught" means nothing.

    python tools/faults.py                      # every fault + control -> reports/gate/faults.md
    python tools/faults.py --only probe-fit-on-test --no-control
    python tools/faults.py --list               # the documented faults, checked against the code

Exit 0 when the control passes and every fault is caught, 1 otherwise, 2 on bad input (a
snippet not found, an unknown fault name). The comparison uses the gate code of this
repository (not the scratch copy), so a fault in the gate itself cannot hide a fault.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import compare, read_expected, worst_row  # noqa: E402
from bench.errors import GenbenchError  # noqa: E402

FAULTS = ROOT / "tools" / "faults.toml"
EXPECTED = ROOT / "reports" / "expected" / "smoke-digits.csv"
REPORT = ROOT / "reports" / "gate" / "faults.md"
PROTOCOL, DATASET = "smoke", "digits"


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    file: str
    find: str
    replace: str
    methods: tuple[str, ...]
    why: str


@dataclasses.dataclass
class Outcome:
    name: str
    methods: tuple[str, ...]
    caught: bool
    summary: str  # the worst row, or why nothing was compared
    run_exit: int
    seconds: float
    ran: bool = True
    #: caught by the spread band (regression / improvement), not only as "changed" on the
    #: table's own platform
    by_band: bool = False


def load_faults(path: Path = FAULTS) -> list[Fault]:
    """The documented faults; every field is required and names are unique."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GenbenchError(f"cannot read {path}: {exc}") from None
    faults, names = [], set()
    for i, entry in enumerate(raw.get("fault", [])):
        missing = [f.name for f in dataclasses.fields(Fault) if f.name not in entry]
        if missing:
            raise GenbenchError(f"{path}: fault #{i + 1} lacks {missing[0]!r}")
        if entry["name"] in names:
            raise GenbenchError(f"{path}: fault {entry['name']!r} listed twice")
        names.add(entry["name"])
        methods = tuple(entry["methods"])
        if not methods or not all(isinstance(m, str) and m for m in methods):
            raise GenbenchError(f"{path}: fault {entry['name']!r} needs a list of methods")
        faults.append(
            Fault(
                entry["name"],
                entry["file"],
                entry["find"],
                entry["replace"],
                methods,
                " ".join(entry["why"].split()),
            )
        )
    if not faults:
        raise GenbenchError(f"{path} lists no [[fault]]")
    return faults


def check_fault(fault: Fault, root: Path = ROOT) -> None:
    """The snippet must occur exactly once in the file, and the replacement must differ."""
    path = root / fault.file
    if not path.is_file():
        raise GenbenchError(f"fault {fault.name}: {fault.file} does not exist")
    count = path.read_text().count(fault.find)
    if count != 1:
        raise GenbenchError(
            f"fault {fault.name}: snippet found {count} times in {fault.file} (must be exactly "
            f"once): update its 'find' in {FAULTS.relative_to(ROOT)}"
        )
    if fault.find == fault.replace:
        raise GenbenchError(f"fault {fault.name}: replacement equals the snippet")


def repository_files(root: Path = ROOT) -> list[str]:
    """The working tree under test: tracked and untracked-but-not-ignored files of a git
    checkout, or every file (caches aside) of a plain folder such as a snapshot."""
    if not (root / ".git").exists():
        return sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".venv" not in p.parts
        )
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def copy_repository(dest: Path, root: Path = ROOT) -> Path:
    for name in repository_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return dest


def apply_fault(fault: Fault, copy: Path) -> None:
    check_fault(fault, copy)
    path = copy / fault.file
    path.write_text(path.read_text().replace(fault.find, fault.replace))


def run_smoke(copy: Path, methods: tuple[str, ...], out: Path, timeout: float) -> tuple[int, str]:
    """`genbench run --protocol smoke` of ``methods`` from the scratch copy (its own bench and
    baselines first on PYTHONPATH, a private cache so no fault leaks into another's)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["GENBENCH_CACHE"] = str(out.parent / "cache")
    env.setdefault("CI", "1")
    command = [
        sys.executable,
        "-m",
        "bench.cli",
        "run",
        "--protocol",
        PROTOCOL,
        "--methods",
        ",".join(methods),
        "--out",
        str(out),
        "--no-report",
        "--device",
        "cpu",
    ]
    try:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def gate(methods: tuple[str, ...], runs: Path, expected: Path) -> tuple[bool, bool, str]:
    """The CI gate, --strict, on ``methods``: (failed?, failed by the spread band alone, i.e.
    a regression or improvement rather than only "changed"?, the worst row in one line)."""
    results = runs / PROTOCOL / DATASET
    try:
        verdicts = compare(read_expected(expected), results, methods)
    except GenbenchError as exc:
        return True, True, f"gate error (exit 2): {exc}"
    flagged = verdicts[verdicts["verdict"] != "ok"]
    if not len(flagged):
        return False, False, f"all {len(verdicts)} rows within tolerance"
    by_band = bool(verdicts["verdict"].isin(["regression", "improvement"]).any())
    worst = worst_row(verdicts, ("regression", "improvement", "changed"))
    assert worst is not None
    value = worst["current"]
    current = "missing" if value is None or value != value else f"{float(value):.4g}"
    note = f" ({worst['note']})" if worst["note"] else ""
    return (
        True,
        by_band,
        (
            f"{len(flagged)} of {len(verdicts)} rows flagged; worst: {worst['verdict']} "
            f"{worst['method']} {worst['metric']} {worst['expected']:.4g} -> {current} "
            f"(tolerance {worst['tolerance']:.3g}){note}"
        ),
    )


def run_one(
    fault: Fault | None,
    methods: tuple[str, ...],
    scratch: Path,
    expected: Path,
    timeout: float,
    source: Path = ROOT,
    reuse: bool = False,
) -> Outcome:
    name = fault.name if fault else "control (no fault)"
    folder = scratch / (fault.name if fault else "control")
    started = time.monotonic()
    if reuse and (folder / "run.log").exists():  # gate again what an earlier call ran
        code, log = 0, (folder / "run.log").read_text()
    elif reuse:
        return Outcome(name, methods, False, "not run yet", -1, 0.0, ran=False)
    else:
        if folder.exists():
            shutil.rmtree(folder)
        copy = copy_repository(folder / "src", source)
        if fault:
            apply_fault(fault, copy)
        code, log = run_smoke(copy, methods, folder / "runs", timeout)
        (folder / "run.log").write_text(log)
    failed, by_band, summary = gate(methods, folder / "runs", expected)
    if code not in (0, 1):  # 1: a run failed (a regression the gate sees); else a crash
        last = log.strip().splitlines()[-1:] or [""]
        summary = f"genbench run crashed (exit {code}: {last[0][:160]}); {summary}"
    return Outcome(
        name, methods, failed, summary, code, time.monotonic() - started, by_band=by_band
    )


def _caught_cell(outcome: Outcome) -> str:
    if not outcome.ran:
        return "not run"
    if not outcome.caught:
        return "**MISSED**"
    return "yes" if outcome.by_band else "yes (changed)"


def write_report(
    path: Path, faults: list[Fault], outcomes: list[Outcome], control: Outcome | None
) -> None:
    by_name = {f.name: f for f in faults}
    caught = sum(o.caught for o in outcomes)
    ran = sum(o.ran for o in outcomes)
    band = sum(o.by_band for o in outcomes)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Seeded faults against the CI gate",
        "",
        f"Written by `python tools/faults.py` on {stamp}:"
        f" each fault of `tools/faults.toml` planted alone in a scratch copy, the smoke study of "
        f"its methods run on CPU, and `genbench compare --strict "
        f"{EXPECTED.relative_to(ROOT)} RUNS --methods ...` applied.",
        "",
        f"**Caught {caught} of {ran} run**"
        + (f" ({len(outcomes) - ran} not run yet)" if ran < len(outcomes) else "")
        + f"; {band} of them by the spread band alone (a regression or improvement on any "
        "platform), the others as `changed` on the table's own platform and seed."
        + (
            f" Control (no fault, {len(control.methods)} methods): "
            f"{'FALSE ALARM' if control.caught else 'passed'}: {control.summary}."
            if control
            else " No control run."
        ),
        "",
        "| fault | file | methods | caught? | worst row | why it is realistic |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for outcome in outcomes:
        fault = by_name[outcome.name]
        lines.append(
            f"| {fault.name} | `{fault.file}` | {', '.join(outcome.methods)} | "
            f"{_caught_cell(outcome)} | "
            f"{outcome.summary} | {fault.why} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated fault names")
    parser.add_argument("--list", action="store_true", help="list and check the faults, run none")
    parser.add_argument("--no-control", action="store_true", help="skip the unmodified run")
    parser.add_argument("--expected", type=Path, default=EXPECTED)
    parser.add_argument("--report", type=Path, default=REPORT, help="markdown table to write")
    parser.add_argument("--scratch", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per smoke run")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="only gate the runs an earlier call left in --scratch (after re-deriving the "
        "expected table); faults it did not run are reported as not run",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="the code to plant faults in: a git checkout (its ls-files) or a plain folder "
        "(default: this repository's working tree)",
    )
    args = parser.parse_args(argv)
    try:
        faults = load_faults()
        if args.only:
            wanted = [n.strip() for n in args.only.split(",")]
            known = {f.name for f in faults}
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise GenbenchError(
                    f"unknown fault {unknown[0]!r}; faults: {', '.join(sorted(known))}"
                )
            faults = [f for f in faults if f.name in wanted]
        for fault in faults:  # all snippets valid before anything runs
            check_fault(fault, args.source)
        read_expected(args.expected)
    except GenbenchError as exc:
        print(f"faults: error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for fault in faults:
            print(f"{fault.name:34} {fault.file:36} {','.join(fault.methods)}")
        return 0
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="genbench-faults-"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"scratch folder: {scratch}", flush=True)
    control = None
    if not args.no_control:
        methods = tuple(sorted({m for f in faults for m in f.methods}))
        control = run_one(
            None, methods, scratch, args.expected, args.timeout, args.source, args.reuse
        )
        print(f"control: {'FALSE ALARM' if control.caught else 'ok'}: {control.summary}")
    outcomes = []
    for fault in faults:
        outcome = run_one(
            fault, fault.methods, scratch, args.expected, args.timeout, args.source, args.reuse
        )
        outcomes.append(outcome)
        print(
            f"{fault.name}: {'caught' if outcome.caught else 'MISSED'} "
            f"({outcome.seconds:.0f} s): {outcome.summary}",
            flush=True,
        )
    write_report(args.report, faults, outcomes, control)
    caught = sum(o.caught for o in outcomes)
    print(f"caught {caught} of {len(outcomes)}; report: {args.report}")
    return 0 if caught == len(outcomes) and not (control and control.caught) else 1


if __name__ == "__main__":
    raise SystemExit(main())
