"""Nothing executes from a file: CIFAR batches, torch-fidelity's cache and --feature-weights.

Each malicious file is a pickle whose unpickling would create a marker file; the tests check
both that genbench refuses it with a GenbenchError and that the marker never appears (a
refusal after the payload ran would still be a compromise).
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.data import files, load_dataset
from bench.errors import GenbenchError

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the original CIFAR-10 files were
    written by cPickle: keys and the array buffer come back as latin-1 ``str``."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        self.write(b"T" + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def cifar_batch(data: np.ndarray, labels: list[int], style: str) -> bytes:
    """A batch as the original files (style 'py2') or as Python 3 would save one."""
    if style == "py2":
        entry: dict[Any, Any] = {
            b"batch_label": b"training batch 1 of 5",
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x_%d.png" % i for i in range(len(labels))],
        }
        buffer = io.BytesIO()
        Py2Pickler(buffer, protocol=2).dump(entry)
        return buffer.getvalue()
    protocol = int(style.removeprefix("py3-proto"))
    entry = {"batch_label": "b", "labels": labels, "data": data, "filenames": ["x.png"]}
    return pickle.dumps(entry, protocol=protocol)


def write_cifar(root: Path, style: str) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in CIFAR_NAMES:
        data = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
        batches[name] = data
        (folder / name).write_bytes(cifar_batch(data, [1, 2, 3], style))
    return batches


@pytest.mark.parametrize("style", ["py2", "py3-proto2", "py3-proto4", "py3-proto5"])
def test_real_like_cifar_batches_read(tmp_path: Path, style: str) -> None:
    batches = write_cifar(tmp_path, style)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert len(data.levels("train")) == 15
    expected = torch.from_numpy(batches["test_batch"].reshape(3, 3, 32, 32))
    assert torch.equal(data.levels("test"), expected)
    assert data.labels("test").tolist() == [1, 2, 3]


class WritesFile:
    """A payload that, when unpickled by a plain unpickler, creates ``marker``."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self) -> tuple[Any, ...]:
        if self.how == "os.system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "exec":
            return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))
        if self.how == "subprocess":
            return (subprocess.call, (["touch", str(self.marker)],))
        return (Path.touch, (self.marker,))  # a __reduce__ that writes a file


PAYLOADS = ["os.system", "exec", "subprocess", "path-touch"]


def malicious_pickle(marker: Path, how: str) -> bytes:
    payload = WritesFile(marker, how)
    entry = {"data": np.zeros((1, 3072), np.uint8), "labels": [payload]}
    return pickle.dumps(entry, protocol=2)


def test_payload_would_run_under_plain_pickle(tmp_path: Path) -> None:
    """The fixture is really malicious (so the refusals below mean something)."""
    marker = tmp_path / "marker"
    pickle.loads(malicious_pickle(marker, "path-touch"))
    assert marker.exists()


@pytest.mark.parametrize("how", PAYLOADS)
def test_malicious_cifar_batch_is_refused_and_runs_nothing(tmp_path: Path, how: str) -> None:
    write_cifar(tmp_path, "py3-proto2")
    marker = tmp_path / "marker"
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(malicious_pickle(marker, how))
    with pytest.raises(GenbenchError, match=rf"refusing to unpickle \S+ from {bad}"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, why",
    [
        (b"\x00\x01garbage", "not a CIFAR-10 batch"),
        (pickle.dumps([1, 2, 3]), "holds a list"),
        (pickle.dumps({"labels": [1]}), "no 'data' entry"),
        (pickle.dumps({"data": np.zeros((1, 5), np.uint8), "labels": [1]}), "N x 3072"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}), "labels"),
    ],
)
def test_malformed_cifar_batch_is_one_clear_error(tmp_path: Path, content: bytes, why: str) -> None:
    write_cifar(tmp_path, "py3-proto2")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(GenbenchError, match=why):
        load_dataset("cifar10", tmp_path, download=False)


def test_codecs_encode_is_limited_to_latin1() -> None:
    with pytest.raises(pickle.UnpicklingError):
        files._latin1_encode("eJw=", "base64")


# --- torch-fidelity: its cache stays off, ours reads npz without pickle ----------------------


def test_malicious_torch_fidelity_cache_is_never_read(tmp_path: Path, monkeypatch) -> None:
    """torch-fidelity's own cache files (read with weights_only=False) are never opened,
    and a pickle planted as our npz feature cache is ignored, rebuilt and never run."""
    from bench.metrics.fidelity import TensorImages, feature_cache_path, fidelity_from_inputs
    from bench.protocol import load_protocol

    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    settings = load_protocol("smoke").eval
    marker = tmp_path / "marker"
    planted = pickle.dumps(WritesFile(marker, "path-touch"))
    # every name torch-fidelity's cache would look up for input2 "ref"
    old_cache = tmp_path / "fidelity"
    old_cache.mkdir()
    for name in ("features-penultimate", "stat-fid-penultimate"):
        (old_cache / f"ref-digits-cnn-{name}.pt").write_bytes(planted)
    ours = feature_cache_path("ref", "digits-cnn", ["penultimate"], cuda=False)
    ours.parent.mkdir(parents=True)
    ours.write_bytes(planted)
    images = TensorImages(
        torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator())
    )
    out = fidelity_from_inputs(images, images, "digits-cnn", settings, 0, "ref")
    assert out["fid"] == pytest.approx(0.0, abs=1e-3)
    assert not marker.exists()
    with np.load(ours, allow_pickle=False) as archive:
        assert archive["penultimate"].shape == (40, 128)


def test_cache_names_stay_inside_the_cache_folder(tmp_path: Path, monkeypatch) -> None:
    from bench.metrics.fidelity import feature_cache_path

    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    for name in ("../../../etc/x", "a/b", "..", "x\x00y"):
        path = feature_cache_path(name, "digits-cnn", ["penultimate"], cuda=False)
        assert path.parent == tmp_path / "fidelity-features"
        assert "/" not in path.name and "\x00" not in path.name and not path.name.startswith(".")
    a = feature_cache_path("a/b", "digits-cnn", ["penultimate"], cuda=False)
    assert a != feature_cache_path("a_b", "digits-cnn", ["penultimate"], cuda=False)


# --- --feature-weights and validate_extractor -------------------------------------------------


def malicious_weights(path: Path, marker: Path) -> None:
    torch.save({"fc.weight": torch.zeros(1), "evil": WritesFile(marker, "path-touch")}, path)


def test_malicious_feature_weights_are_refused_and_run_nothing(tmp_path: Path) -> None:
    from bench.metrics.extractors import validate_extractor

    marker, weights = tmp_path / "marker", tmp_path / "weights.pt"
    malicious_weights(weights, marker)
    torch.load(weights, weights_only=False)  # the fixture really runs code when unrestricted
    assert marker.exists()
    marker.unlink()
    with pytest.raises(GenbenchError, match=r"weights\.pt is not a loadable weights file"):
        validate_extractor("inception-v3-compat", "cifar10", str(weights))
    assert not marker.exists()


def test_malicious_feature_weights_never_reach_evaluation(tmp_path: Path) -> None:
    """Even past validation, the evaluator loads the weights itself with weights_only=True."""
    from bench.metrics.fidelity import TensorImages, fidelity_from_inputs
    from bench.protocol import load_protocol

    marker, weights = tmp_path / "marker", tmp_path / "weights.pt"
    malicious_weights(weights, marker)
    images = TensorImages(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), rgb=True)
    settings = load_protocol("smoke").eval
    with pytest.raises(GenbenchError, match="not a loadable weights file"):
        fidelity_from_inputs(
            images, images, "inception-v3-compat", settings, 0, None, None, str(weights)
        )
    assert not marker.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is not a file"),
        (lambda p: p.write_bytes(b"\x00garbage\xff" * 10), "not a loadable weights file"),
        (lambda p: torch.save([torch.zeros(2)], p), "not a state dict"),
        (lambda p: torch.save({"fc.weight": torch.zeros(2)}, p), "do not fit"),
    ],
)
def test_bad_feature_weights_give_one_line(tmp_path: Path, make, message: str) -> None:
    from bench.metrics.extractors import validate_extractor

    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(GenbenchError, match=message) as info:
        validate_extractor("inception-v3-compat", "cifar10", str(path))
    assert "\n" not in str(info.value)


def test_validate_extractor_names_and_datasets() -> None:
    from bench.metrics.extractors import validate_extractor

    validate_extractor("digits-cnn", "digits", None)
    validate_extractor("mnist-cnn", "mnist", None)
    with pytest.raises(GenbenchError, match="unknown feature extractor 'digit-cnn'.*digits-cnn"):
        validate_extractor("digit-cnn", "digits", None)
    with pytest.raises(
        GenbenchError,
        match=r"'mnist-cnn' is made for mnist5k, mnist, not "
        r"'digits'\. Valid extractors for digits: digits-cnn",
    ):
        validate_extractor("mnist-cnn", "digits", None)
    with pytest.raises(
        GenbenchError, match="applies to inception-v3-compat, dinov2-vit-s-14, clip-vit-b-32 only"
    ):
        validate_extractor("digits-cnn", "digits", __file__)
    with pytest.raises(GenbenchError, match="empty"):
        validate_extractor("inception-v3-compat", "cifar10", "")


def test_good_inception_weights_load_through_our_loader(tmp_path: Path, monkeypatch) -> None:
    """A genuine Inception state dict (random values: the real file is a download) passes
    validation and scores images; the recorded sha is the file's."""
    import hashlib

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.metrics import extractors
    from bench.metrics.fidelity import TensorImages, fidelity_from_inputs
    from bench.protocol import load_protocol

    with monkeypatch.context() as patch:  # build one without weights, only to get its keys
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, s: None)
        patch.setattr(
            "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url",
            lambda *a, **k: {},
        )
        state = FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    path = tmp_path / "inception.pt"
    torch.save(state, path)
    extractors.validate_extractor("inception-v3-compat", "cifar10", str(path))
    assert (
        extractors.inception_weights_sha(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    gen = torch.Generator().manual_seed(0)
    images = TensorImages(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=gen))
    settings = load_protocol("smoke").eval
    out = fidelity_from_inputs(
        images, images, "inception-v3-compat", settings, 0, None, None, str(path)
    )
    assert out["fid"] == pytest.approx(0.0, abs=1e-3)


# --- honest numbers: per-run peak memory --------------------------------------------------------


def test_memory_monitor_reports_each_windows_own_peak() -> None:
    """A 200 MB allocation, then nothing: the second window must not inherit the first's
    peak (the process lifetime peak did, so every run of a study showed the same value)."""
    import time

    from bench.metrics.throughput import MemoryMonitor, current_rss_mb

    if current_rss_mb() is None:
        pytest.skip("no /proc/self/statm")
    cpu = torch.device("cpu")
    with MemoryMonitor(cpu) as big:
        block = torch.ones(200 * 2**20 // 4)  # 200 MB, touched
        time.sleep(0.2)  # several sampling intervals
        del block
    with MemoryMonitor(cpu) as small:
        time.sleep(0.1)
    assert big.kind == small.kind == "cpu-rss-sampled"
    assert big.peak_mb > small.peak_mb + 100
    assert small.peak_mb > 0


def test_memory_monitor_stops_its_thread() -> None:
    import threading

    from bench.metrics.throughput import MemoryMonitor

    with MemoryMonitor(torch.device("cpu")):
        pass
    assert not any(t.name == "genbench-memory-monitor" for t in threading.enumerate())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_monitor_resets_the_cuda_peak() -> None:
    from bench.metrics.throughput import MemoryMonitor

    cuda = torch.device("cuda")
    with MemoryMonitor(cuda) as big:
        block = torch.ones(200 * 2**20 // 4, device=cuda)
        del block
    with MemoryMonitor(cuda) as small:
        pass
    assert big.kind == "cuda-allocated"
    assert big.peak_mb >= 200 and small.peak_mb < big.peak_mb - 150


# --- honest numbers: the real-data row draws without duplicates ---------------------------------


def real_data_row(count: int = 297):
    from baselines.reference.rows import RealData
    from bench.method import DataSpec

    spec = DataSpec("digits", 1, 8, 8, num_levels=17, num_classes=10)
    row = RealData(spec)
    # image i is constant i / 1000: its index can be read back from any pixel
    held_out = (torch.arange(count).float() / 1000).view(count, 1, 1, 1).expand(count, 1, 8, 8)
    row.prepare(torch.zeros(1, 1, 8, 8), torch.zeros(1), held_out.clone())
    return row


def indices(images: torch.Tensor) -> list[int]:
    return torch.round(images[:, 0, 0, 0] * 1000).long().tolist()


def test_real_data_batches_of_one_draw_never_repeat_an_image() -> None:
    """The harness draws in batches (smoke: 150 + 150) from one generator."""
    row = real_data_row()
    assert row.max_samples == 297
    generator = torch.Generator().manual_seed(0)
    drawn = [indices(row.sample(size, generator)) for size in (150, 100, 47)]
    flat = [i for batch in drawn for i in batch]
    assert sorted(flat) == list(range(297))  # every test image exactly once
    again = real_data_row()
    first = indices(again.sample(150, torch.Generator().manual_seed(0)))
    assert first == drawn[0]  # a new draw with the same seed starts the same permutation
    assert first != indices(again.sample(150, torch.Generator().manual_seed(1)))


def test_real_data_beyond_its_size_repeats_only_after_using_all() -> None:
    row = real_data_row()
    images = row.sample(700, torch.Generator().manual_seed(0))
    assert images.shape == (700, 1, 8, 8)
    counts = np.bincount(indices(images), minlength=297)
    assert counts.min() == 2 and counts.max() == 3  # 700 = 2 x 297 + 106
    assert sorted(indices(images[:297])) == list(range(297))
    settings = row.sample_settings()
    assert settings["max_samples"] == 297 and "without replacement" in settings["draw"]
    assert settings["images_drawn"] == 700 and settings["repeated_images"] == 700 - 297
    row.sample(100, torch.Generator().manual_seed(0))  # a new draw
    assert row.sample_settings()["repeated_images"] == 0
