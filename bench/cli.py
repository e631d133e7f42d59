"""genbench's command line: list | run | train | report | compare | score | sample.

    genbench list
    genbench run [--protocol quick] [--dataset digits] [--methods a,b] [--seeds 0,1,2]
                 [--out runs] [--set key=value ...]
    genbench sweep [--executor pool] [--workers N] ...  (runs as parallel processes)
    genbench train --method M [--seed S] ...          (one run; under torchrun, data-parallel)
    genbench report [--runs runs] [--protocol quick] [--dataset digits] [--out reports]
    genbench compare EXPECTED.csv [RESULTS_DIR] [--update | --derive-tolerances | --clip]
                     [--strict] [--methods a,b]
    genbench score --samples DIR|FILE.npz --dataset NAME [--extractor X] [--as NAME]
    genbench sample --run RUN_DIR [--n 1000] --out samples.npz [--steps K]
    genbench dataset add CARD.toml
    genbench compare-methods A B --study DIR [--bootstrap 200] [--json]
    genbench correlate STUDY_A STUDY_B [--out FILE.md|.csv]

Every command takes --include PATH (a plug-in file or package folder; repeatable).

Errors a user can cause print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from bench.errors import GenbenchError

log = logging.getLogger("genbench")
#: the folder under a results root where `genbench run` and `report` write leaderboards
LEADERBOARDS = "leaderboards"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"genbench: error: {message}\n")


def _include_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATH",
        help="a plug-in: a .py file or package folder registering methods (repeatable)",
    )


DATASET_HELP = (
    "a dataset name (built-in or a registered card), folder:PATH, npz:PATH or a card .toml"
)


def _study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", default="quick", help="protocol name or .toml path")
    parser.add_argument(
        "--dataset", default=None, help=f"override the protocol's dataset: {DATASET_HELP}"
    )
    _include_option(parser)
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
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="convolutions in NHWC (the layout GPU tensor cores want); recorded in the result",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every network of the method; recorded in the result",
    )
    parser.add_argument("--extractor", default=None, help="feature extractor for FID")
    parser.add_argument(
        "--feature-weights",
        default=None,
        metavar="PATH",
        help="Inception weights file for machines without internet",
    )
    parser.add_argument("--force", action="store_true", help="re-run finished runs")
    parser.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="where the leaderboard is written (default: OUT/leaderboards; pass --reports "
        "reports to refresh the committed tables)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write a leaderboard")


def _jobs_arg(text: str) -> int | None:
    """argparse type of --jobs: a positive integer or "auto" (None)."""
    return None if text == "auto" else _positive_int(text)


def _parallel_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        type=_jobs_arg,
        default=None,
        help="runs at once, each in its own worker process with cores/jobs torch threads "
        "(default auto: one per core on a CPU when the runs train >= 10,000 images each, "
        "else 1, in this process)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch threads per run (default: every core, or cores/jobs)",
    )


def _positive_int(text: str) -> int:
    """argparse type of counts (--workers, --slurm-gpus, --timeout-min): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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
    _include_option(ls)

    run = commands.add_parser("run", help="train and evaluate a study, then write a leaderboard")
    _study_options(run)
    run.add_argument(
        "--methods", default=None, help="comma-separated names or family:NAME (default: all)"
    )
    run.add_argument("--seeds", default=None, help="comma-separated (default: the protocol's)")
    _parallel_options(run)

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
        type=_positive_int,
        default=None,
        help="concurrent runs (pool default: one per visible GPU, else 1; "
        "slurm: the array's parallelism)",
    )
    sweep.add_argument("--slurm-partition", default=None)
    sweep.add_argument("--slurm-gpus", type=_positive_int, default=1, help="GPUs per job (slurm)")
    sweep.add_argument(
        "--timeout-min",
        type=_positive_int,
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
    one.add_argument("--seed", type=_seed_arg, default=0, help="one seed in [0, 2**31)")

    rep = commands.add_parser("report", help="aggregate results into a leaderboard")
    rep.add_argument("--runs", type=Path, default=Path("runs"))
    rep.add_argument("--protocol", default=None, help="default: every protocol found")
    rep.add_argument("--dataset", default=None, help="default: every dataset found")
    rep.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: RUNS/leaderboards (pass --out reports to refresh the committed tables)",
    )
    rep.add_argument(
        "--readme",
        type=Path,
        default=None,
        metavar="README.md",
        help="also paste the leaderboard between the README's excerpt markers (writes md)",
    )
    rep.add_argument(
        "--format",
        dest="formats",
        type=_report_formats,
        default=None,
        metavar="FMT[,FMT]",
        help="what to write: md, csv, html (one self-contained page), latex (leaderboard.tex, "
        "a booktabs tabular); default md,csv,html",
    )

    cmp = commands.add_parser(
        "compare",
        help="regression verdicts against an expected table (docs/GATE.md)",
        description="Exit 1 on a regression (and, with --strict, on an improvement); "
        "--update, --derive-tolerances and --clip rewrite EXPECTED instead.",
    )
    cmp.add_argument("expected", type=Path)
    cmp.add_argument(
        "results",
        type=Path,
        nargs="?",
        help="folder of result files of one protocol and dataset, e.g. runs/smoke/digits",
    )
    mode = cmp.add_mutually_exclusive_group()
    mode.add_argument(
        "--update",
        action="store_true",
        help="rewrite EXPECTED's values from the results (keeping tolerances and how they "
        "were derived)",
    )
    mode.add_argument(
        "--derive-tolerances",
        action="store_true",
        help="rewrite EXPECTED from a multi-seed study in RESULTS: seed 0's values, "
        "tolerance = K x the seed-to-seed std (at least the metric's noise floor), clipped "
        "so every row can fail",
    )
    mode.add_argument(
        "--clip",
        action="store_true",
        help="rewrite EXPECTED with every tolerance clipped so its row can fail (no RESULTS)",
    )
    cmp.add_argument("--k", type=float, default=3.0, help="--derive-tolerances: K (default 3)")
    cmp.add_argument(
        "--strict", action="store_true", help="improvements beyond tolerance fail too (exit 1)"
    )
    cmp.add_argument(
        "--methods",
        default=None,
        help="comma-separated: compare only these methods' rows (and their variants)",
    )

    cm = commands.add_parser(
        "compare-methods",
        help="is A better than B? paired 95%% intervals over seeds (bench/stats.py)",
        description="A - B for every ranked metric both rows have: paired over the seeds both "
        "have (Student t, 95%%); with fewer than 2 common seeds, FID and KID by a bootstrap "
        "over each run's evaluation samples. Verdict: 'A better', 'B better' or 'not "
        "distinguishable' (the interval contains 0).",
    )
    cm.add_argument("a", metavar="A", help="a method (or sampler-variant row) of the study")
    cm.add_argument("b", metavar="B", help="another one")
    cm.add_argument(
        "--study",
        type=Path,
        required=True,
        help="folder of result files of one protocol and dataset, e.g. runs/quick/digits",
    )
    cm.add_argument(
        "--metrics", default=None, help="comma-separated columns or bases (fid, bpd; default all)"
    )
    cm.add_argument(
        "--bootstrap",
        type=_positive_int,
        default=200,
        help="resamples of the one-seed bootstrap (default 200)",
    )
    cm.add_argument("--seed", type=_seed_arg, default=0, help="seed of the bootstrap (default 0)")
    cm.add_argument("--device", default="cpu", help="where the bootstrap redraws samples (cpu)")
    cm.add_argument("--data-root", type=Path, default=None)
    cm.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _include_option(cm)

    cor = commands.add_parser(
        "correlate",
        help="rank agreement of two studies per metric (Spearman, Kendall, swapped pairs)",
    )
    cor.add_argument("study_a", type=Path, metavar="STUDY_A", help="e.g. runs/quick/digits")
    cor.add_argument("study_b", type=Path, metavar="STUDY_B", help="e.g. runs/standard/digits")
    cor.add_argument(
        "--metrics", default=None, help="comma-separated columns or bases (default all)"
    )
    cor.add_argument("--out", type=Path, default=None, help="also write FILE.md or FILE.csv")
    cor.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _include_option(cor)

    sc = commands.add_parser(
        "score",
        help="FID / KID / precision-recall of samples made anywhere (.npz or image folder)",
        description="Scores images produced anywhere against the reference the leaderboard "
        "uses (the dataset's train split, the protocol's evaluation settings, the same "
        "extractor); --as NAME adds them to the leaderboard as an external row.",
    )
    sc.add_argument("--samples", type=Path, required=True, help="FILE.npz or a folder of images")
    sc.add_argument("--dataset", required=True, help=DATASET_HELP)
    sc.add_argument("--protocol", default="quick", help="whose eval settings (default quick)")
    sc.add_argument("--extractor", default=None, help="feature extractor for FID")
    sc.add_argument("--feature-weights", default=None, metavar="PATH")
    sc.add_argument("--seed", type=_seed_arg, default=0, help="seed of KID subsets (default 0)")
    sc.add_argument("--device", default="auto")
    sc.add_argument("--data-root", type=Path, default=None)
    sc.add_argument("--no-download", action="store_true")
    sc.add_argument(
        "--as",
        dest="as_name",
        default=None,
        metavar="NAME",
        help="write the scores as leaderboard row NAME (OUT/<protocol>/<dataset>/NAME/seed-S)",
    )
    sc.add_argument("--out", type=Path, default=Path("runs"), help="results root for --as")
    sc.add_argument("--json", action="store_true", help="print the scores as JSON")
    _include_option(sc)

    smp = commands.add_parser(
        "sample",
        help="draw samples from a finished run (the images its evaluation drew, same seed)",
    )
    smp.add_argument("--run", type=Path, required=True, help="a run folder with result.json")
    smp.add_argument("--n", type=_positive_int, default=None, help="images (default: fid_samples)")
    smp.add_argument("--out", type=Path, required=True, help="FILE.npz, or a folder for PNGs")
    smp.add_argument("--steps", type=_positive_int, default=None, help="sampler steps")
    smp.add_argument(
        "--sampler",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampler settings passed to sample() (e.g. sampler=ddim), repeatable",
    )
    smp.add_argument("--seed", type=_seed_arg, default=None, help="default: the run's seed")
    smp.add_argument("--batch-size", type=_positive_int, default=None)
    smp.add_argument("--device", default="cpu")
    smp.add_argument("--data-root", type=Path, default=None)
    _include_option(smp)

    dset = commands.add_parser("dataset", help="register a dataset card (toml) by its name")
    dset.add_argument("action", choices=["add", "show"])
    dset.add_argument("card", help="add: the card .toml; show: a dataset name or spec")
    dset.add_argument("--data-root", type=Path, default=None)

    doc = commands.add_parser(
        "doctor",
        help="one prepared check of this machine's GPU, written as one JSON file",
        description="--gpu: training img/s, MFU and peak memory (fp32, bf16, channels_last, "
        "torch.compile), Inception feature-extraction img/s and a 2-process DDP step, each "
        "under a time limit (bench/doctor.py). Without a GPU: a CPU dry run at tiny sizes.",
    )
    doc.add_argument("--gpu", action="store_true", help="run the GPU check")
    doc.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON file (default reports/gpu/doctor.json; a dry run: "
        "runs/doctor/doctor-dry-run.json)",
    )
    doc.add_argument("--method", default="ddpm", help="the method trained (default ddpm)")
    doc.add_argument("--batch", type=_positive_int, default=None, help="training batch (64)")
    doc.add_argument("--steps", type=_positive_int, default=None, help="measured steps (20)")
    doc.add_argument("--warmup", type=_positive_int, default=None, help="warm-up steps (5)")
    doc.add_argument("--fid-batch", type=_positive_int, default=None, help="Inception batch (64)")
    doc.add_argument(
        "--parts", default=None, help="comma-separated subset of train,fid,ddp (default: all)"
    )
    doc.add_argument("--ddp-backend", default="auto", help="auto (nccl, then gloo) | nccl | gloo")
    doc.add_argument(
        "--budget-s", type=float, default=None, help="wall-time budget in seconds (450)"
    )
    doc.add_argument("--skip-compile", action="store_true", help="no torch.compile variant")
    doc.add_argument("--no-channels-last", action="store_true", help="no channels_last variant")
    doc.add_argument(
        "--dry-run", action="store_true", help="the CPU dry run at tiny sizes, even on a GPU"
    )
    doc.add_argument(
        "--feature-weights",
        default=None,
        metavar="PATH",
        help="real Inception weights (default: torch.hub's file if present, else random init)",
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
        if getattr(args, "include", None):
            from bench import plugins

            for path in args.include:
                plugins.include(path)
        return {
            "score": cmd_score,
            "sample": cmd_sample,
            "dataset": cmd_dataset,
            "list": cmd_list,
            "run": cmd_run,
            "train": cmd_train,
            "report": cmd_report,
            "compare": cmd_compare,
            "compare-methods": cmd_compare_methods,
            "correlate": cmd_correlate,
            "sweep": cmd_sweep,
            "doctor": cmd_doctor,
        }[args.command](args)
    except GenbenchError as exc:
        print(f"genbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genbench: interrupted; finished runs are kept, a re-run resumes", file=sys.stderr)
        return 130


def _seeds(text: str | None) -> list[int] | None:
    """``--seeds 0,1,2`` -> [0, 1, 2]; None keeps the protocol's. An empty list, a part that
    is not an integer, a seed outside [0, 2**31) or a duplicate is an error, never a study
    that silently runs nothing (or something else)."""
    if text is None:
        return None
    from bench.protocol import check_seeds

    parts = [s.strip() for s in text.split(",")]
    if not text.strip():
        raise GenbenchError("--seeds is empty: give comma-separated integers, e.g. 0,1,2")
    try:
        seeds = [int(s) for s in parts]
    except ValueError:
        raise GenbenchError(f"--seeds expects comma-separated integers, got {text!r}") from None
    return list(check_seeds(seeds, "--seeds"))


def _methods(text: str | None) -> list[str] | None:
    """``--methods`` -> names; None (not given) means every method. An empty value is an
    error: ``--methods ""`` from an unset shell variable must not run all 32 methods."""
    from bench.registry import METHODS, parse_names

    if text is None:
        return None
    return parse_names("method", text, METHODS)


def _check_out(out: Path) -> None:
    """--out must be (or become) a folder: a file there, or a file in its path, is one line
    before anything runs instead of a traceback after the first run."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise GenbenchError(f"--out {out}: {folder} exists and is not a folder")
            return


def _seed_arg(text: str) -> int:
    """argparse type of ``train --seed``: one integer in [0, 2**31)."""
    try:
        seeds = _seeds(text)
    except GenbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seeds is None or len(seeds) != 1:
        raise argparse.ArgumentTypeError(f"expected one integer seed, got {text!r}")
    return seeds[0]


def cmd_list(args: argparse.Namespace) -> int:
    from bench.plugins import plugin_of
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
            plugin = plugin_of(name)
            origin = f"  (plug-in {plugin.source})" if plugin is not None else ""
            lines.append(f"  {name:<22} [{caps}{bound}]  {cls.summary}{origin}")
        lines.append("method families (--methods family:NAME):")
        for family, names in sorted(method_families().items()):
            lines.append(f"  {family:<22} {', '.join(names)}")
    if args.what in ("all", "datasets"):
        lines.append("datasets:")
        for name in DATASETS.names():
            doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name:<22} {doc}")
        from bench.data.custom import card_dirs, read_card, registered_cards

        for name, path in sorted(registered_cards().items()):
            description = read_card(path).description or f"dataset card {path}"
            lines.append(f"  {name:<22} {description}  (card {path})")
        lines.append(
            "  (also: --dataset folder:PATH | npz:PATH | CARD.toml; cards registered with "
            f"`genbench dataset add` live in {', '.join(map(str, card_dirs()))})"
        )
    if args.what in ("all", "extractors"):
        lines.append("feature extractors:")
        for name in EXTRACTORS.names():
            info = EXTRACTORS.get(name)
            marker = " (plug-in)" if getattr(info, "build", None) is not None else ""
            lines.append(f"  {name:<22} for {', '.join(info.datasets) or 'any data'}{marker}")
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


def _request(args: argparse.Namespace, methods: list[str] | None, seeds: list[int] | None):
    """The study the arguments describe, as the serialisable request every path runs."""
    from bench.worker import StudyRequest

    return StudyRequest(
        protocol=str(args.protocol),
        dataset=args.dataset,
        methods=methods,
        seeds=seeds,
        sets=list(args.sets),
        out=str(args.out),
        data_root=str(args.data_root) if args.data_root else None,
        download=not args.no_download,
        device=args.device,
        precision=args.precision,
        extractor=args.extractor,
        feature_weights=str(args.feature_weights) if args.feature_weights else None,
        channels_last=args.channels_last,
        compile=args.compile,
        force=bool(getattr(args, "force", False)),
        jobs=getattr(args, "jobs", 1),
        threads=getattr(args, "threads", None),
        includes=[str(Path(p).expanduser().resolve()) for p in args.include],
    )


def _run(args: argparse.Namespace, methods: list[str] | None, seeds: list[int] | None) -> int:
    from bench.report import write_leaderboard
    from bench.worker import exit_code, run_request

    outcome = run_request(_request(args, methods, seeds))
    study, results = outcome.study, outcome.results
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "diverged", "failed")}
    log.info(
        "done in %.1f s: %d ok, %d diverged, %d failed",
        outcome.seconds,
        counts["ok"],
        counts["diverged"],
        counts["failed"],
    )
    if not args.no_report and any(r.status == "ok" for r in results):
        folder = write_leaderboard(
            args.out, study.protocol.name, study.protocol.dataset, leaderboard_root(args)
        )
        print(f"leaderboard: {folder / 'leaderboard.md'}")
    return exit_code(outcome)


def leaderboard_root(args: argparse.Namespace) -> Path:
    """Leaderboards of a study go beside its results unless --reports names a folder, so a
    user's run never rewrites the committed reference tables under reports/."""
    return args.reports if args.reports is not None else args.out / LEADERBOARDS


def cmd_run(args: argparse.Namespace) -> int:
    methods, seeds = _methods(args.methods), _seeds(args.seeds)
    _check_out(args.out)
    return _run(args, methods, seeds)


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.executors import default_workers, run_pool
    from bench.report import write_leaderboard

    methods, seeds = _methods(args.methods), _seeds(args.seeds)
    if args.workers is not None and args.workers < 1:  # 0 used to mean "the default"
        raise GenbenchError(f"--workers must be at least 1, got {args.workers}")
    _check_out(args.out)
    if args.executor == "local":
        return _run(args, methods, seeds)
    workers = args.workers if args.workers is not None else default_workers()
    request = _request(args, methods, seeds)
    study = request.plan()  # validates everything before any run
    if args.executor == "slurm":
        from bench.executors import run_submitit

        parameters = {
            "timeout_min": args.timeout_min,
            "name": "genbench",
            "slurm_array_parallelism": args.workers if args.workers is not None else 64,
        }
        if args.submitit_cluster in (None, "slurm"):
            parameters["gpus_per_node"] = args.slurm_gpus
        if args.slurm_partition:
            parameters["slurm_partition"] = args.slurm_partition
        folder = args.out / ".submitit"  # job logs; dot-folders are not protocols
        codes = run_submitit(study, request, folder, args.submitit_cluster, parameters)
    else:
        codes = run_pool(study, request, workers)
    crashed = sorted(name for name, code in codes.items() if code != 0)
    if not args.no_report:
        folder = write_leaderboard(
            args.out, study.protocol.name, study.protocol.dataset, leaderboard_root(args)
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


def _report_formats(text: str) -> tuple[str, ...]:
    """argparse type of ``report --format``: "md,latex" -> ("md", "latex")."""
    from bench.report import parse_formats

    try:
        return parse_formats(text)
    except GenbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import DEFAULT_FORMATS, FORMATS, write_leaderboard

    formats = tuple(getattr(args, "formats", None) or DEFAULT_FORMATS)
    if args.readme and "md" not in formats:  # the README's excerpt is the markdown table
        formats = (*formats, "md")
    if not args.runs.is_dir():
        raise GenbenchError(f"results folder {args.runs} does not exist")
    out = args.out if args.out is not None else args.runs / LEADERBOARDS
    found = sorted(
        p.name
        for p in args.runs.iterdir()
        if p.is_dir() and p.name[0] != "." and p.name != LEADERBOARDS
    )
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
            folder = write_leaderboard(args.runs, protocol, dataset, out, formats)
            for fmt in formats:
                print(f"leaderboard: {folder / FORMATS[fmt]}")
            written += 1
            if args.readme:
                from bench.report import paste_excerpt

                paste_excerpt(folder / "leaderboard.md", args.readme)
    if not written:
        raise GenbenchError(f"no results found under {args.runs}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """The regression gate and the three ways to rewrite its table (docs/GATE.md)."""
    from bench import compare as gate

    methods = [m.strip() for m in args.methods.split(",")] if args.methods is not None else None
    if methods is not None and not all(methods):
        raise GenbenchError(f"--methods {args.methods!r}: empty method name")
    if args.clip:
        table, dropped = gate.clip_table(gate.read_expected(args.expected))
        for message in dropped:
            print(message)
        gate.write_expected(table, args.expected)
        print(f"wrote {len(table)} expected rows to {args.expected}; every row can fail")
        return 0
    if args.results is None:
        raise GenbenchError("compare needs a RESULTS folder (or --clip)")
    if not args.results.is_dir():
        raise GenbenchError(f"results folder {args.results} does not exist")
    previous = gate.read_expected(args.expected) if args.expected.exists() else None
    if args.update or args.derive_tolerances:
        if args.derive_tolerances:
            table, messages = gate.derive_expected(args.results, previous, k=args.k)
            for message in messages:
                print(message)
        else:
            table = gate.expected_from_results(args.results, previous)
        gate.write_expected(table, args.expected)
        print(f"wrote {len(table)} expected rows to {args.expected}")
        return 0
    if previous is None:
        raise GenbenchError(
            f"expected table {args.expected} does not exist (create it with --update)"
        )
    loose = gate.rows_that_cannot_fail(gate.select_methods(previous, methods))
    if len(loose):
        print(f"warning: {len(loose)} row(s) cannot fail (fix with --clip):", file=sys.stderr)
    verdicts = gate.compare(previous, args.results, methods)
    regressions = verdicts[verdicts["verdict"] == "regression"]
    improvements = verdicts[verdicts["verdict"] == "improvement"]
    changed = verdicts[verdicts["verdict"] == "changed"]
    strictly = "; failing: --strict" if args.strict else ""
    if len(changed):
        print(
            "CHANGED on the table's own platform and seed, within tolerance (refresh with "
            f"`genbench compare --update`{strictly}):"
        )
        print(changed.to_markdown(index=False, floatfmt=".6g"))
    if len(improvements):
        print(
            f"IMPROVEMENTS beyond tolerance (refresh with `genbench compare --update`{strictly}"
            f"{' unless run with other numerics than the table' if args.strict else ''}):"
        )
        print(improvements.to_markdown(index=False, floatfmt=".4g"))
    if len(regressions):
        print("REGRESSIONS:")
        print(regressions.to_markdown(index=False, floatfmt=".4g"))
        return 1
    # an improvement from runs with other numerics (thread count, torch) than the table's
    # is reported, not failed: the band was measured on the table's numerics
    if args.strict and (int((~improvements["elsewhere"].astype(bool)).sum()) or len(changed)):
        return 1
    print(
        f"no regressions: {len(verdicts)} metrics within tolerance"
        f"{'' if args.strict else ' or better'}"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """``genbench score``: see bench/score.py."""
    import json

    from bench.score import ScoreRequest, score

    request = ScoreRequest(
        samples=args.samples,
        dataset=args.dataset,
        protocol=args.protocol,
        extractor=args.extractor,
        feature_weights=args.feature_weights,
        seed=args.seed,
        device=args.device,
        data_root=args.data_root,
        download=not args.no_download,
        as_name=args.as_name,
        out=args.out,
    )
    scores, written = score(request)
    if args.json:
        print(json.dumps(scores, indent=2, sort_keys=True))
    else:
        extractor = scores["settings"]["extractor"]
        shown = " ".join(
            f"{key}[{extractor}]={scores[key]:.6g}"
            for key in ("fid", "kid", "precision", "recall", "sample_acc")
            if scores.get(key) is not None
        )
        print(f"{args.samples}: {scores['settings']['num_samples']} images: {shown}")
    if written is not None:
        print(f"result: {written} (external row {args.as_name!r}; `genbench report` shows it)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """``genbench sample``: see bench/runs.py."""
    from bench.runs import draw_samples, open_run, parse_sampler_args, write_samples

    kwargs = parse_sampler_args(args.sampler)
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.out.suffix != ".npz" and args.out.exists() and not args.out.is_dir():
        raise GenbenchError(f"--out {args.out} is a file: give a .npz path or a folder")
    run = open_run(args.run, args.device, args.data_root)
    count = args.n if args.n is not None else run.fid_samples
    images, labels, info = draw_samples(run, count, kwargs, args.seed, args.batch_size)
    written = write_samples(images, labels, info, args.out)
    print(
        f"{written}: {count} samples of {info['method']} (seed {info['seed']}, {info['section']})"
    )
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    """``genbench dataset add CARD.toml`` registers a card; ``show NAME`` describes one."""
    from bench.data import load_dataset
    from bench.data.custom import register_card

    if args.action == "add":
        path = register_card(Path(args.card))
        print(f"registered: {path} (use --dataset {path.stem})")
        return 0
    data = load_dataset(args.card, args.data_root, download=False)
    spec = data.spec
    print(
        f"{spec.name}: {len(data.levels('train'))} train / {len(data.levels('test'))} test, "
        f"{spec.channels}x{spec.height}x{spec.width}, {spec.num_levels} levels, "
        f"{spec.num_classes} classes; source {data.source}"
    )
    for key, value in sorted(data.meta.items()):
        print(f"  {key}: {value}")
    return 0


def cmd_compare_methods(args: argparse.Namespace) -> int:
    """``genbench compare-methods A B --study DIR``: see bench/stats.py."""
    from bench import stats

    items = stats.compare_methods(
        args.study,
        args.a,
        args.b,
        args.metrics,
        args.bootstrap,
        args.seed,
        args.device,
        args.data_root,
    )
    if args.json:
        print(stats.comparisons_json(args.study, args.a, args.b, items))
    else:
        print(stats.comparisons_markdown(args.a, args.b, items))
    return 0


def cmd_correlate(args: argparse.Namespace) -> int:
    """``genbench correlate STUDY_A STUDY_B``: see bench/stats.py."""
    from bench import stats
    from bench.results import write_text_atomic

    if args.out is not None and args.out.suffix not in (".md", ".csv"):
        raise GenbenchError(f"--out {args.out}: give a .md or .csv file")
    items = stats.correlate(args.study_a, args.study_b, args.metrics)
    markdown = stats.agreements_markdown(args.study_a, args.study_b, items)
    if args.out is not None:
        if args.out.suffix == ".csv":
            write_text_atomic(args.out, stats.agreements_csv(items))
        else:
            write_text_atomic(args.out, markdown)
    if args.json:
        print(stats.agreements_json(args.study_a, args.study_b, items))
    else:
        print(markdown, end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """``genbench doctor --gpu``: see bench/doctor.py."""
    from bench import doctor

    return doctor.main(args)


if __name__ == "__main__":
    raise SystemExit(main())
