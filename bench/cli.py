"""genbench's command line: list | run | train | report | compare.

    genbench list
    genbench run [--protocol quick] [--dataset digits] [--methods a,b] [--seeds 0,1,2]
                 [--out runs] [--set key=value ...]
    genbench sweep [--executor pool] [--workers N] ...  (runs as parallel processes)
    genbench train --method M [--seed S] ...          (one run; under torchrun, data-parallel)
    genbench report [--runs runs] [--protocol quick] [--dataset digits] [--out reports]
    genbench compare EXPECTED.csv RESULTS_DIR [--update]

Errors a user can cause print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import NoReturn

from bench.errors import GenbenchError

log = logging.getLogger("genbench")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"genbench: error: {message}\n")


def _study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", default="quick", help="protocol name or .toml path")
    parser.add_argument("--dataset", default=None, help="override the protocol's dataset")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="results root")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="train.KEY / eval.KEY protocol settings, METHOD.KEY or KEY "
        "hyper-parameters (repeatable)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder with downloaded datasets (default ~/.cache/genbench/data)",
    )
    parser.add_argument("--no-download", action="store_true", help="never download datasets")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 (autocast)")
    parser.add_argument("--extractor", default=None, help="feature extractor for FID")
    parser.add_argument(
        "--feature-weights",
        default=None,
        metavar="PATH",
        help="Inception weights file for machines without internet",
    )
    parser.add_argument("--force", action="store_true", help="re-run finished runs")
    parser.add_argument(
        "--reports", type=Path, default=Path("reports"), help="where the leaderboard is written"
    )
    parser.add_argument("--no-report", action="store_true", help="do not write a leaderboard")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genbench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = commands.add_parser("list", help="methods, datasets, extractors and protocols")
    ls.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "methods", "datasets", "extractors", "protocols"],
    )

    run = commands.add_parser("run", help="train and evaluate a study, then write a leaderboard")
    _study_options(run)
    run.add_argument(
        "--methods", default=None, help="comma-separated names or family:NAME (default: all)"
    )
    run.add_argument("--seeds", default=None, help="comma-separated (default: the protocol's)")

    sweep = commands.add_parser("sweep", help="a study as parallel processes, one per GPU")
    _study_options(sweep)
    sweep.add_argument(
        "--methods", default=None, help="comma-separated names or family:NAME (default: all)"
    )
    sweep.add_argument("--seeds", default=None, help="comma-separated (default: the protocol's)")
    sweep.add_argument(
        "--executor",
        default="pool",
        choices=["pool", "slurm", "local"],
        help="pool: one `genbench train` process per run, --workers at a time; "
        "slurm: a submitit job array, requeued on preemption; "
        "local: in this process, one after another (= genbench run)",
    )
    sweep.add_argument(
        "--workers",
        type=int,
        default=None,
        help="concurrent runs (pool default: one per visible GPU, else 1; "
        "slurm: the array's parallelism)",
    )
    sweep.add_argument("--slurm-partition", default=None)
    sweep.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per job (slurm)")
    sweep.add_argument(
        "--timeout-min",
        type=int,
        default=24 * 60,
        help="per-job time limit (slurm); jobs that hit it are requeued",
    )
    sweep.add_argument(
        "--submitit-cluster",
        default=None,
        choices=["slurm", "local", "debug"],
        help="submitit backend (default: slurm when available); local and "
        "debug run the same job array on this machine, for testing",
    )

    one = commands.add_parser("train", help="one run (method, seed); data-parallel under torchrun")
    _study_options(one)
    one.add_argument("--method", required=True)
    one.add_argument("--seed", type=int, default=0)

    rep = commands.add_parser("report", help="aggregate results into a leaderboard")
    rep.add_argument("--runs", type=Path, default=Path("runs"))
    rep.add_argument("--protocol", default=None, help="default: every protocol found")
    rep.add_argument("--dataset", default=None, help="default: every dataset found")
    rep.add_argument("--out", type=Path, default=Path("reports"))
    rep.add_argument(
        "--readme",
        type=Path,
        default=None,
        metavar="README.md",
        help="also paste the leaderboard between the README's excerpt markers",
    )

    cmp = commands.add_parser("compare", help="regression verdicts against an expected table")
    cmp.add_argument("expected", type=Path)
    cmp.add_argument("results", type=Path, help="folder of result files, e.g. runs/quick/digits")
    cmp.add_argument(
        "--update",
        action="store_true",
        help="rewrite EXPECTED from the results (keeping tolerances)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("torch_fidelity").setLevel(logging.WARNING)
    try:
        return {
            "list": cmd_list,
            "run": cmd_run,
            "train": cmd_train,
            "report": cmd_report,
            "compare": cmd_compare,
            "sweep": cmd_sweep,
        }[args.command](args)
    except GenbenchError as exc:
        print(f"genbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genbench: interrupted; finished runs are kept, a re-run resumes", file=sys.stderr)
        return 130


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GenbenchError(f"--seeds expects comma-separated integers, got {text!r}") from None


def cmd_list(args: argparse.Namespace) -> int:
    from bench.protocol import load_protocol, protocol_names
    from bench.registry import DATASETS, EXTRACTORS, METHODS, method_families

    lines = []
    if args.what in ("all", "methods"):
        lines.append("methods (capabilities):")
        for name in METHODS.names():
            cls = METHODS.get(name)
            caps = ", ".join(sorted(cls.capabilities)) or "-"
            bound = (
                " (bound)"
                if "log_likelihood" in cls.capabilities and cls.likelihood_is_bound
                else ""
            )
            lines.append(f"  {name:<22} [{caps}{bound}]  {cls.summary}")
        lines.append("method families (--methods family:NAME):")
        for family, names in sorted(method_families().items()):
            lines.append(f"  {family:<22} {', '.join(names)}")
    if args.what in ("all", "datasets"):
        lines.append("datasets:")
        for name in DATASETS.names():
            doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name:<22} {doc}")
    if args.what in ("all", "extractors"):
        lines.append("feature extractors:")
        for name in EXTRACTORS.names():
            info = EXTRACTORS.get(name)
            lines.append(f"  {name:<22} for {', '.join(info.datasets)}")
    if args.what in ("all", "protocols"):
        lines.append("protocols:")
        for name in protocol_names():
            p = load_protocol(name)
            lines.append(
                f"  {p.tag:<22} {p.dataset}, {p.train.budget_images:,} images, "
                f"seeds {list(p.seeds)}: {p.description}"
            )
    print("\n".join(lines))
    return 0


def _plan(args: argparse.Namespace, methods: list[str] | None, seeds: list[int] | None):
    from bench.runner import plan_study

    return plan_study(
        args.protocol,
        args.dataset,
        methods,
        seeds,
        args.sets,
        args.out,
        args.data_root,
        not args.no_download,
        args.device,
        args.precision,
        args.extractor,
        args.feature_weights,
    )


def _run(args: argparse.Namespace, methods: list[str] | None, seeds: list[int] | None) -> int:
    from bench.report import write_leaderboard
    from bench.runner import run_study

    started = time.perf_counter()
    study = _plan(args, methods, seeds)
    log.info(
        "study: %s on %s, %d run(s), device %s",
        study.protocol.tag,
        study.protocol.dataset,
        len(study.runs),
        study.device,
    )
    results = run_study(study, force=args.force)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "diverged", "failed")}
    log.info(
        "done in %.1f s: %d ok, %d diverged, %d failed",
        time.perf_counter() - started,
        counts["ok"],
        counts["diverged"],
        counts["failed"],
    )
    if not args.no_report:
        folder = write_leaderboard(
            args.out, study.protocol.name, study.protocol.dataset, args.reports
        )
        print(f"leaderboard: {folder / 'leaderboard.md'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.registry import METHODS, parse_names

    methods = parse_names("method", args.methods, METHODS) if args.methods else None
    return _run(args, methods, _seeds(args.seeds))


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.executors import default_workers, run_pool
    from bench.registry import METHODS, parse_names
    from bench.report import write_leaderboard

    methods = parse_names("method", args.methods, METHODS) if args.methods else None
    if args.executor == "local":
        return _run(args, methods, _seeds(args.seeds))
    workers = args.workers or default_workers()
    if workers < 1:
        raise GenbenchError(f"--workers must be at least 1, got {workers}")
    study = _plan(args, methods, _seeds(args.seeds))  # validates everything before any run
    train_args = [
        "--protocol",
        str(args.protocol),
        "--dataset",
        study.protocol.dataset,
        "--out",
        str(args.out),
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--extractor",
        study.extractor,
    ]
    for item in args.sets:
        train_args += ["--set", item]
    if args.data_root:
        train_args += ["--data-root", str(args.data_root)]
    if args.no_download:
        train_args.append("--no-download")
    if args.feature_weights:
        train_args += ["--feature-weights", str(args.feature_weights)]
    if args.force:
        train_args.append("--force")
    if args.executor == "slurm":
        from bench.executors import run_submitit

        parameters = {
            "timeout_min": args.timeout_min,
            "name": "genbench",
            "slurm_array_parallelism": args.workers or 64,
        }
        if args.submitit_cluster in (None, "slurm"):
            parameters["gpus_per_node"] = args.slurm_gpus
        if args.slurm_partition:
            parameters["slurm_partition"] = args.slurm_partition
        folder = args.out / ".submitit"  # job logs; dot-folders are not protocols
        codes = run_submitit(
            study, train_args, args.force, folder, args.submitit_cluster, parameters
        )
    else:
        codes = run_pool(study, train_args, workers, args.force)
    crashed = sorted(name for name, code in codes.items() if code != 0)
    if not args.no_report:
        folder = write_leaderboard(
            args.out, study.protocol.name, study.protocol.dataset, args.reports
        )
        print(f"leaderboard: {folder / 'leaderboard.md'}")
    if crashed:
        print(
            f"genbench: {len(crashed)} run process(es) crashed: {', '.join(crashed)} "
            "(see their train.log)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One run; under ``torchrun --nproc_per_node=N`` it trains data-parallel."""
    from bench import distributed
    from bench.registry import METHODS

    METHODS.get(args.method)
    args.no_report = True
    info = distributed.init_from_env()
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _run(args, [args.method], [args.seed])
    finally:
        distributed.shutdown()


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_leaderboard

    if not args.runs.is_dir():
        raise GenbenchError(f"results folder {args.runs} does not exist")
    found = sorted(p.name for p in args.runs.iterdir() if p.is_dir() and p.name[0] != ".")
    protocols = [args.protocol] if args.protocol else found
    written = 0
    for protocol in protocols:
        base = args.runs / protocol
        if not base.is_dir():
            raise GenbenchError(f"no results for protocol {protocol!r} under {args.runs}")
        datasets = (
            [args.dataset] if args.dataset else sorted(d.name for d in base.iterdir() if d.is_dir())
        )
        for dataset in datasets:
            folder = write_leaderboard(args.runs, protocol, dataset, args.out)
            print(f"leaderboard: {folder / 'leaderboard.md'}")
            written += 1
            if args.readme:
                from bench.report import paste_excerpt

                paste_excerpt(folder / "leaderboard.md", args.readme)
    if not written:
        raise GenbenchError(f"no results found under {args.runs}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare, expected_from_results, read_expected

    if args.update:
        previous = read_expected(args.expected) if args.expected.exists() else None
        table = expected_from_results(args.results, previous)
        from bench.results import write_text_atomic

        write_text_atomic(args.expected, table.to_csv(index=False))
        print(f"wrote {len(table)} expected rows to {args.expected}")
        return 0
    if not args.expected.exists():
        raise GenbenchError(
            f"expected table {args.expected} does not exist (create it with --update)"
        )
    verdicts = compare(read_expected(args.expected), args.results)
    regressions = verdicts[verdicts["verdict"] == "regression"]
    improvements = verdicts[verdicts["verdict"] == "improvement"]
    if len(improvements):
        print("improvements (refresh with `genbench compare --update`):")
        print(improvements.to_markdown(index=False, floatfmt=".4g"))
    if len(regressions):
        print("REGRESSIONS:")
        print(regressions.to_markdown(index=False, floatfmt=".4g"))
        return 1
    print(f"no regressions: {len(verdicts)} metrics within tolerance or better")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
