"""Plug-ins: methods from a file, a package folder or an installed entry point, validated
like ours, and every way a plug-in can be broken refused in one line with nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import plugins
from bench.cli import main
from bench.registry import DATASETS, EXTRACTORS, METHODS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_method.py"

HEADER = """
import torch
from bench.method import SAMPLE, LOG_LIKELIHOOD, ENCODE, Method, Update
from bench.registry import register_method
"""

#: a minimal working method; {name}, {caps}, {sample} and {extra} are filled per test
TEMPLATE = (
    HEADER
    + """
@register_method("{name}")
class Plug(Method):
    capabilities = frozenset({caps})
    summary = "test plug-in"

    @classmethod
    def default_hparams(cls, spec):
        return {{"lr": 0.01}}

    def __init__(self, spec, lr):
        super().__init__(spec)
        self.mean = torch.nn.Parameter(torch.full(spec.shape, 0.5))
        self.add_optimizer("main", torch.optim.SGD(self.parameters(), lr=lr))

    def train_step(self, batch, step):
        yield Update("main", lambda: ((batch.x - self.mean) ** 2).mean())

    def sample(self, n, generator, labels=None):
{sample}
{extra}
"""
)
GOOD_SAMPLE = "        return self.mean.clamp(0, 1).expand(n, *self.spec.shape).clone()"


def write_plugin(
    folder: Path,
    name: str = "plug-ok",
    caps: str = "{SAMPLE}",
    sample: str = GOOD_SAMPLE,
    extra: str = "",
    file: str = "plug.py",
) -> Path:
    path = folder / file
    path.write_text(TEMPLATE.format(name=name, caps=caps, sample=sample, extra=extra))
    return path


@pytest.fixture(autouse=True)
def isolated_registries(monkeypatch):
    """Every test starts from genbench's own registrations and leaves them so."""
    METHODS.names()  # load ours first
    for registry in (METHODS, DATASETS, EXTRACTORS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    monkeypatch.setattr(plugins, "_LOADED", dict(plugins._LOADED))
    monkeypatch.setattr(plugins, "_METHOD_OWNER", dict(plugins._METHOD_OWNER))
    from torch_fidelity import registry as fidelity_registry

    from bench.metrics import extractors

    saved = [
        (table, dict(table))
        for table in (extractors.FEATURE_NETWORKS, fidelity_registry.FEATURE_EXTRACTORS_REGISTRY)
    ]
    yield
    for table, content in saved:  # module-level tables imported by name elsewhere
        table.clear()
        table.update(content)
    extractors.feature_network.cache_clear()


def run_cli(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "runs"
    code = main(["run", "--protocol", "smoke", "--device", "cpu", "--out", str(out), *args])
    return code, out


def test_example_plugin_is_listed_with_its_origin(capsys) -> None:
    assert main(["list", "methods", "--include", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("pixel-mixture"))
    assert "log_likelihood, sample" in line and f"plug-in {EXAMPLE}" in line
    assert any(x.split() == ["my_method", "pixel-mixture"] for x in out.splitlines())


def test_plugin_trains_scores_and_records_its_provenance(tmp_path: Path) -> None:
    code, out = run_cli(
        tmp_path,
        "--include",
        str(EXAMPLE),
        "--methods",
        "pixel-mixture",
        "--set",
        "train.budget_images=256",
        "--no-report",
    )
    assert code == 0
    path = out / "smoke" / "digits" / "pixel-mixture" / "seed-0" / "result.json"
    result = json.loads(path.read_text())
    assert result["status"] == "ok"
    plugin = result["config"]["plugin"]
    assert plugin == {
        "name": "my_method",
        "sha256": hashlib.sha256(EXAMPLE.read_bytes()).hexdigest(),
        "version": "1.0.0",
    }
    assert result["env"]["plugin_source"] == str(EXAMPLE)
    assert result["metrics"]["fidelity"]["fid"] > 0
    assert result["metrics"]["likelihood"]["is_bound"] is False


def test_a_changed_plugin_reruns_its_runs(tmp_path: Path) -> None:
    from bench.runner import config_hash, is_finished, plan_study, run_config

    source = tmp_path / "plug.py"
    write_plugin(tmp_path)
    plugins.include(source)
    out = tmp_path / "runs"
    study = plan_study(
        "smoke", methods=["plug-ok"], sets=["train.budget_images=128"], out=out, device="cpu"
    )
    before = config_hash(run_config(study.runs[0], study))
    # the same plug-in with one character changed is another plug-in: another hash
    changed = tmp_path / "other" / "plug.py"
    changed.parent.mkdir()
    changed.write_text(source.read_text().replace("lr=lr", "lr=lr * 1.0"))
    for registry in (METHODS,):
        registry.unregister("plug-ok")
    plugins.include(changed)
    after = config_hash(run_config(study.runs[0], study))
    assert before != after
    assert not is_finished(study.runs[0], after)


def test_package_folder_plugin(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    write_plugin(package, name="pkg-method", file="model.py")
    (package / "__init__.py").write_text("from . import model\n__version__ = '2.1'\n")
    plugin = plugins.include(package)
    assert plugin.methods == ("pkg-method",) and plugin.version == "2.1"
    assert plugin.family == "mypkg"
    assert plugins.include(package) is plugin  # loaded once


BROKEN = {
    "import error": (
        HEADER + "raise RuntimeError('boom at import')\n",
        "failed to import: RuntimeError: boom at import",
    ),
    "syntax error": ("def broken(:\n", "failed to import: SyntaxError"),
    "name taken": (
        TEMPLATE.format(name="ddpm", caps="{SAMPLE}", sample=GOOD_SAMPLE, extra=""),
        "method name 'ddpm' is already taken",
    ),
    "no train_step": (
        TEMPLATE.format(name="plug-x", caps="{SAMPLE}", sample=GOOD_SAMPLE, extra="").replace(
            "def train_step", "def not_train_step"
        ),
        "method 'plug-x' lacks train_step",
    ),
    "capability not implemented": (
        TEMPLATE.format(name="plug-x", caps="{SAMPLE, ENCODE}", sample=GOOD_SAMPLE, extra=""),
        "declares capability 'encode' but does not implement encode()",
    ),
    "unknown capability": (
        TEMPLATE.format(name="plug-x", caps="{SAMPLE, 'teleport'}", sample=GOOD_SAMPLE, extra=""),
        "declares unknown capability 'teleport'",
    ),
    "not a Method": (
        HEADER + "@register_method('plug-x')\nclass Plug:\n    pass\n",
        "not a bench.method.Method subclass",
    ),
    "values outside [0, 1]": (
        TEMPLATE.format(
            name="plug-x",
            caps="{SAMPLE}",
            sample="        return torch.full((n, *self.spec.shape), 2.0)",
            extra="",
        ),
        "sample(4) returned values in [2, 2], not in [0, 1]",
    ),
    "wrong shape": (
        TEMPLATE.format(
            name="plug-x",
            caps="{SAMPLE}",
            sample="        return torch.rand(n, 3, 5, 5, generator=generator)",
            extra="",
        ),
        "sample(4) returned shape (4, 3, 5, 5); images of this data are (4, 1, 8, 8)",
    ),
    "NaN samples": (
        TEMPLATE.format(
            name="plug-x",
            caps="{SAMPLE}",
            sample="        return torch.full((n, *self.spec.shape), float('nan'))",
            extra="",
        ),
        "returned NaN or inf",
    ),
    "exception in sample": (
        TEMPLATE.format(
            name="plug-x", caps="{SAMPLE}", sample="        raise KeyError('oops')", extra=""
        ),
        "fails its check: KeyError",
    ),
    "bad log_likelihood": (
        TEMPLATE.format(
            name="plug-x",
            caps="{SAMPLE, LOG_LIKELIHOOD}",
            sample=GOOD_SAMPLE,
            extra="    def log_likelihood(self, x):\n        return torch.zeros(len(x), 2)\n",
        ),
        "log_likelihood of 4 images returned shape (4, 2)",
    ),
}


#: loaded fine, refused when the study is planned (its method's outputs are checked)
CHECKED_WHEN_PLANNED = {
    "values outside [0, 1]",
    "wrong shape",
    "NaN samples",
    "exception in sample",
    "bad log_likelihood",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_is_one_line_and_touches_nothing(case: str, tmp_path: Path, capsys) -> None:
    text, message = BROKEN[case]
    path = tmp_path / "bad_plugin.py"
    path.write_text(textwrap.dedent(text))
    before = set(METHODS.names())
    code, out = run_cli(tmp_path, "--include", str(path), "--methods", "plug-x,ddpm")
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"plug-in {path}" in lines[0] and message in lines[0], lines[0]
    assert not out.exists()  # nothing under runs/
    if case not in CHECKED_WHEN_PLANNED:  # a plug-in refused at import leaves nothing behind
        assert set(METHODS.names()) == before


def test_missing_or_odd_include_paths(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    for target, message in (
        (tmp_path / "nope.py", "does not exist"),
        (tmp_path / "notes.txt", "is not a .py file or a package folder"),
        (tmp_path / "folder", "without __init__.py"),
    ):
        assert main(["list", "--include", str(target)]) == 2
        assert message in capsys.readouterr().err


def _fake_distribution(root: Path, module_source: str, entry: str) -> None:
    """An installed distribution with a genbench.plugins entry point, found on PYTHONPATH."""
    (root / "fakeplug_mod.py").write_text(module_source)
    info = root / "fakeplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[genbench.plugins]\nfake = {entry}\n")


def _genbench(args: list[str], pythonpath: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(pythonpath), **env}
    environment.pop(plugins.NO_PLUGINS_ENV, None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=pythonpath,
        timeout=300,
    )


def test_entry_point_plugins(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    _fake_distribution(
        good,
        TEMPLATE.format(name="ep-method", caps="{SAMPLE}", sample=GOOD_SAMPLE, extra=""),
        "fakeplug_mod",
    )
    shown = _genbench(["list", "methods"], good)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith("ep-method"))
    assert "plug-in entry point fake (fakeplug)" in line

    broken = tmp_path / "broken"
    broken.mkdir()
    _fake_distribution(broken, "raise ImportError('missing dependency')\n", "fakeplug_mod")
    failed = _genbench(["list", "methods"], broken)
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1
    assert "plug-in entry point fake (fakeplug) failed to import" in failed.stderr
    assert "GENBENCH_NO_PLUGINS=1" in failed.stderr
    skipped = _genbench(["list", "methods"], broken, GENBENCH_NO_PLUGINS="1")
    assert skipped.returncode == 0 and "ddpm" in skipped.stdout


NETWORK_PLUGIN = """
import torch
from bench.metrics.extractors import register_feature_network


def build():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh())
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
        def forward(self, x):
            return self.net(x.float() / 255.0)
    return Net()


register_feature_network("tiny-net", build, input_shape=(1, 8, 8))
"""


def test_plugin_feature_network_scores_runs_and_samples(tmp_path: Path, capsys) -> None:
    """A plug-in's own backbone (torch-fidelity's register_feature_extractor, our way):
    a run and `genbench score` of the same samples give the same FID through it, the
    result names it and its weights' sha256; a shape it does not take is refused."""
    plugin = tmp_path / "net.py"
    plugin.write_text(NETWORK_PLUGIN)
    code, out = run_cli(
        tmp_path,
        "--include",
        str(plugin),
        "--methods",
        "independent-pixels",
        "--extractor",
        "tiny-net",
        "--no-report",
    )
    assert code == 0
    run_dir = out / "smoke" / "digits" / "independent-pixels" / "seed-0"
    scores = json.loads((run_dir / "result.json").read_text())["metrics"]["fidelity"]
    assert scores["settings"]["extractor"] == "tiny-net"
    assert len(scores["settings"]["weights_sha256"]) == 64
    samples = tmp_path / "s.npz"
    assert main(["sample", "--run", str(run_dir), "--out", str(samples)]) == 0
    capsys.readouterr()
    args = ["score", "--samples", str(samples), "--dataset", "digits", "--protocol", "smoke"]
    assert main([*args, "--extractor", "tiny-net", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(scores["fid"], rel=1e-9)
    assert main(["list", "extractors"]) == 0
    assert "tiny-net               for any data (plug-in)" in capsys.readouterr().out
    code, _ = run_cli(tmp_path / "x", "--methods", "real-data", "--extractor", "tiny-net",
                      "--dataset", "mnist5k")  # fmt: skip
    assert code == 2
    assert "takes 1x8x8 images; this data has 1x28x28" in capsys.readouterr().err


def test_sweep_workers_load_the_plugin(tmp_path: Path) -> None:
    """A pool sweep runs each run in a worker process from its request file: the request
    carries the plug-in, so the worker loads it too."""
    out = tmp_path / "runs"
    code = main(
        [
            "sweep", "--executor", "pool", "--workers", "1", "--protocol", "smoke",
            "--device", "cpu", "--out", str(out), "--include", str(EXAMPLE),
            "--methods", "pixel-mixture", "--set", "train.budget_images=128", "--no-report",
        ]
    )  # fmt: skip
    assert code == 0
    run_dir = out / "smoke" / "digits" / "pixel-mixture" / "seed-0"
    request = json.loads((run_dir / "request.json").read_text())
    assert request["includes"] == [str(EXAMPLE)]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
