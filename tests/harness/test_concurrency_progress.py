"""Two studies on one runs/ never run a run twice; stale locks are taken over; a failure never
replaces a success; logs without a terminal show progress; a user's run leaves the committed
reports alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.killpoints import run_command
from bench.locks import LOCK_FILE, RunLock
from bench.results import FAILED_FILE, load_result

METHODS = "independent-pixels,nade,made,fvsbn"


def command(out: Path, *extra: str) -> list[str]:
    return run_command(out, METHODS, "--set", "train.budget_images=512", *extra)


ENV = {**os.environ, "CI": "1", "GENBENCH_WAIT_POLL_SECONDS": "0.2"}


def test_two_concurrent_studies_run_every_run_once(tmp_path: Path) -> None:
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    for log in logs:
        with open(log, "w") as handle:
            procs.append(subprocess.Popen(command(tmp_path / "runs"), stderr=handle, env=ENV))
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    text = "".join(log.read_text() for log in logs)
    for method in METHODS.split(","):
        starts = text.count(f"start: {method} seed 0")
        assert starts == 1, f"{method} ran {starts} times:\n{text}"
        result = load_result(tmp_path / "runs/smoke/digits" / method / "seed-0/result.json")
        assert result.status == "ok"
    assert not list((tmp_path / "runs").rglob("history")), "a run was executed twice"
    assert not list((tmp_path / "runs").rglob(LOCK_FILE))
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.name.endswith(".tmp")]


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "runs/smoke/digits/independent-pixels/seed-0"
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_text(
        f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "started": "x"}}'
    )
    done = subprocess.run(command(tmp_path / "runs"), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert "taking over a stale lock" in done.stderr and f"pid {dead.pid}" in done.stderr


def test_lock_of_a_live_owner_is_respected(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    mine = RunLock(folder)
    assert mine.acquire()
    other = RunLock(folder)
    assert not other.acquire() and other.held_by_other()
    mine.release()
    assert other.acquire()
    other.release()
    assert not (folder / LOCK_FILE).exists()


def test_lock_not_touched_for_long_is_stale(tmp_path: Path, monkeypatch) -> None:
    import bench.locks as locks

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text('{"pid": 1, "host": "another-host", "started": "x"}')
    assert RunLock(folder).held_by_other()  # alive as far as we can tell
    old = time.time() - 3600
    os.utime(folder / LOCK_FILE, (old, old))
    monkeypatch.setattr(locks, "STALE_S", 60.0)
    lock = RunLock(folder)
    assert lock.acquire()
    lock.release()


def test_failed_rerun_keeps_the_ok_result_and_exits_nonzero(tmp_path: Path, monkeypatch, capsys):
    from bench.cli import main
    from bench.registry import METHODS as REGISTRY

    out = tmp_path / "runs"
    args = ["run", "--protocol", "smoke", "--device", "cpu", "--methods", "nade", "--out"]
    args += [str(out), "--no-report", "--set", "train.budget_images=256"]
    assert main(args) == 0
    folder = out / "smoke/digits/nade/seed-0"
    good = (folder / "result.json").read_bytes()

    def broken(self, batch, step):
        raise RuntimeError("a bug introduced after the good run")

    monkeypatch.setattr(REGISTRY.get("nade"), "train_step", broken)
    capsys.readouterr()
    assert main([*args, "--force"]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) did not finish: nade seed 0 failed" in err
    assert (folder / "result.json").read_bytes() == good
    failed = load_result(folder / FAILED_FILE)
    assert failed.status == "failed" and "a bug introduced" in failed.error
    assert not (folder / "history").exists()


def test_redirected_logs_show_start_end_and_heartbeat(tmp_path: Path) -> None:
    env = {**ENV, "GENBENCH_HEARTBEAT_SECONDS": "0"}
    env.pop("CI")  # no terminal is enough: stderr is a file here
    done = subprocess.run(
        command(tmp_path / "runs"), capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "run 2/4 start: nade seed 0, 512 images" in err
    assert "run 2/4 end: nade seed 0: ok, 512 images" in err and "bpd=" in err
    assert "nade/seed-0: 128/512 images, step 2" in err  # training heartbeat
    assert "nade/seed-0: evaluating fidelity:0" in err  # evaluation heartbeat


def test_main_job_does_not_touch_committed_reports(tmp_path: Path, monkeypatch) -> None:
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    code = main(
        ["run", "--protocol", "smoke", "--device", "cpu", "--methods", "independent-pixels"]
    )
    assert code == 0
    assert not list((tmp_path / "reports").iterdir())
    assert (tmp_path / "runs/leaderboards/smoke-digits/leaderboard.md").exists()
    # and `genbench report` over runs/ does not mistake the leaderboards for a protocol
    assert main(["report", "--runs", "runs"]) == 0
    assert not list((tmp_path / "reports").iterdir())


def test_long_evaluation_calls_log_a_heartbeat(caplog) -> None:
    import logging

    from bench.train import Ticker

    caplog.set_level(logging.INFO, logger="bench.train")
    with Ticker("m/seed-0: evaluating likelihood:0", every=0.05, enabled=True):
        time.sleep(0.3)
    ticks = [r.message for r in caplog.records if "still running after" in r.message]
    assert len(ticks) >= 2 and ticks[0].startswith("m/seed-0: evaluating likelihood:0")
    caplog.clear()
    with Ticker("quiet", every=0.05, enabled=False):  # a terminal has its progress bar
        time.sleep(0.15)
    assert not caplog.records
