"""Kill a study with SIGKILL at random moments until it completes, then compare every result
with an uninterrupted study of the same configuration.

    python tools/random_kills.py --kills 20 --methods nade,vae,glow,ddpm --out /tmp/kills

Prints one line per kill (when it happened, what the study was doing) and a summary: kills
survived, results lost, metrics differing (timings excluded). Exit 1 when anything was lost
or differs. The kill moments are drawn from a seeded generator (--seed), uniformly within
[--min-delay, --max-delay] seconds after each (re)start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.killpoints import run_command

TIMINGS = ("sample_images_per_s", "sample_warmup_excluded")


def command(out: Path, methods: str, budget: int) -> list[str]:
    return run_command(
        out,
        methods,
        "--set",
        f"train.budget_images={budget}",
        "--set",
        "train.checkpoint_every_images=128",
    )


def numbers(out: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for path in sorted(out.rglob("result.json")):
        if "history" in path.parts:
            continue
        raw = json.loads(path.read_text())
        metrics = dict(raw["metrics"])
        speed = metrics.pop("throughput", {})
        metrics["fidelity_variants"] = [
            {k: v for k, v in row.items() if k not in TIMINGS}
            for row in metrics.get("fidelity_variants", [])
        ]
        found[raw["method"]] = {
            "status": raw["status"],
            "metrics": metrics,
            "images": speed.get("train_images_seen"),
        }
    return found


def last_activity(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1][-110:] if lines else "(starting)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--methods", default="nade,vae,glow,ddpm")
    parser.add_argument("--budget", type=int, default=1280)
    parser.add_argument("--out", type=Path, default=Path("/tmp/genbench-kills"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-delay", type=float, default=2.0)
    parser.add_argument("--max-delay", type=float, default=25.0)
    args = parser.parse_args()
    env = {**os.environ, "CI": "1", "GENBENCH_HEARTBEAT_SECONDS": "0"}
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    reference, killed = args.out / "reference", args.out / "killed"
    started = time.perf_counter()
    subprocess.run(
        command(reference, args.methods, args.budget), env=env, check=True, capture_output=True
    )
    print(f"uninterrupted study: {time.perf_counter() - started:.1f} s", flush=True)
    rng = random.Random(args.seed)
    kills, restarts = 0, 0
    while True:
        log = args.out / f"attempt-{restarts}.log"
        with open(log, "w") as handle:
            proc = subprocess.Popen(
                command(killed, args.methods, args.budget), stderr=handle, env=env
            )
        restarts += 1
        if kills < args.kills:
            delay = rng.uniform(args.min_delay, args.max_delay)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                print(f"kill {kills:2d} after {delay:5.1f} s: {last_activity(log)}", flush=True)
                continue
        code = proc.wait()
        if code == 0 and kills >= args.kills:
            break
        if code != 0:
            print(f"a restart exited {code}: see {log}", flush=True)
            return 1
    want, got = numbers(reference), numbers(killed)
    lost = sorted(set(want) - set(got))
    differing = sorted(m for m in want if m in got and got[m] != want[m])
    tmp = [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    print(
        f"kills survived: {kills} of {kills} ({restarts} starts); results lost: {len(lost)} "
        f"{lost or ''}; metrics differing: {len(differing)} {differing or ''}; "
        f"temp files left: {len(tmp)}"
    )
    return 1 if lost or differing or tmp else 0


if __name__ == "__main__":
    raise SystemExit(main())
