"""A GAN whose losses become NaN/inf is recorded as diverged, with its step, and the study
carries on with the next run.

With Adam's bounded steps and normalised critics (batch, layer or spectral norm), a merely
large learning rate such as 10 does not overflow: those runs fail silently (the FID shows it)
rather than numerically. An absurd learning rate overflows float32 in the first iterations,
which is the divergence this test needs.
"""

from __future__ import annotations

from pathlib import Path

from bench.results import RESULT_FILE, load_result
from bench.runner import plan_study, run_study

#: small networks: this test checks the harness path, not sample quality
SMALL = ("generator_width=16", "generator_fc_width=0", "critic_width=16", "critic_fc_width=32")


def test_divergent_gan_is_recorded_and_the_study_carries_on(tmp_path: Path) -> None:
    sets = [
        "train.budget_images=640",
        "eval.fid_samples=100",
        "gan.lr=1e20",
        *(f"gan.{item}" for item in SMALL),
        *(f"sngan.{item}" for item in SMALL),
    ]
    study = plan_study("smoke", methods=["gan", "sngan"], sets=sets, out=tmp_path, device="cpu")
    results = {r.method: r for r in run_study(study)}
    diverged = results["gan"]
    assert diverged.status == "diverged"
    assert diverged.diverged_at_step == 0
    assert "became nan" in diverged.error or "became inf" in diverged.error
    on_disk = load_result(study.runs[0].directory / RESULT_FILE)
    assert on_disk.status == "diverged" and on_disk.diverged_at_step == 0
    carried_on = results["sngan"]  # the run after the diverged one still trains and scores
    assert carried_on.status == "ok"
    assert carried_on.metrics["throughput"]["train_images_seen"] >= 640
    assert "fidelity" in carried_on.metrics
