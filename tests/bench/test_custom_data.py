"""User datasets from files: folder:, npz:, dataset cards and registered cards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import custom, load_dataset
from bench.errors import GenbenchError


def make_set(
    seed: int = 0, n: int = 40, size: int = 8, classes: int = 3, rgb: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """n random images (N, H, W) or (N, H, W, 3) and labels in 0..classes-1."""
    rng = np.random.default_rng(seed)
    shape = (n, size, size, 3) if rgb else (n, size, size)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    labels = np.arange(n) % classes
    return images, labels


def save_png(path: Path, image: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode=mode).save(path)
    return path


def write_folder(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None = None,
    seed: int = 1,
) -> Path:
    """PNG files under root (flat, or in class subfolders), named so that the sorted file
    order is a random permutation of the rows."""
    names = np.random.default_rng(seed).permutation(len(images))
    for row, image in enumerate(images):
        folder = root if labels is None else root / (class_names or [])[int(labels[row])]
        save_png(folder / f"img{names[row]:04d}.png", image)
    return root


def write_npz(
    path: Path, images: np.ndarray, labels: np.ndarray | None = None, seed: int = 2
) -> Path:
    order = np.random.default_rng(seed).permutation(len(images))
    arrays = {"images": images[order], "extra": np.arange(3)}  # extra keys are ignored
    if labels is not None:
        arrays["labels"] = labels[order]
    np.savez(path, **arrays)
    return path


def assert_same_split(a, b) -> None:
    for split in ("train", "test"):
        assert torch.equal(a.levels(split), b.levels(split))
        assert torch.equal(a.labels(split), b.labels(split))
    assert a.meta["content_sha256"] == b.meta["content_sha256"]


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(GenbenchError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True)
def no_user_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Registered cards live in a folder of the test, never in ~/.config."""
    cards = tmp_path / "registered"
    monkeypatch.setenv("GENBENCH_DATASETS", str(cards))
    return cards


def test_folder_and_npz_give_identical_grayscale_splits(tmp_path: Path) -> None:
    images, labels = make_set()
    names = ["c0", "c1", "c2"]
    folder = custom.load_files(write_folder(tmp_path / "digs", images, labels, names, seed=5))
    npz = custom.load_files(write_npz(tmp_path / "digs.npz", images, labels, seed=9))
    assert_same_split(folder, npz)
    # another row order, another file order: still the same
    assert_same_split(npz, custom.load_files(write_npz(tmp_path / "b.npz", images, labels, 3)))
    assert folder.spec.shape == (1, 8, 8) and folder.spec.num_levels == 256
    assert folder.spec.num_classes == npz.spec.num_classes == 3
    assert len(folder.levels("test")) == 8 and len(folder.levels("train")) == 32
    assert folder.levels("train").dtype == torch.uint8 and folder.labeled
    meta = folder.meta
    assert meta["format"] == "folder" and npz.meta["format"] == "npz"
    assert meta["split"] == "seeded" and meta["split_seed"] == 0 and meta["test_fraction"] == 0.2
    assert meta["class_names"] == names and npz.meta["class_names"] is None
    assert meta["num_images"] == 40 and meta["card"] is None and meta["extractor"] is None
    assert meta["path"] == str((tmp_path / "digs").resolve())
    assert folder.spec.name == "digs" and npz.spec.name == "digs"
    # all 40 images present, each once, with its label
    got = torch.cat([folder.levels("train"), folder.levels("test")])[:, 0].numpy()
    got_labels = torch.cat([folder.labels("train"), folder.labels("test")]).numpy()
    pairs = sorted((img.tobytes(), int(lab)) for img, lab in zip(got, got_labels, strict=True))
    assert pairs == sorted(
        (img.tobytes(), int(lab)) for img, lab in zip(images, labels, strict=True)
    )


def test_content_hash_changes_with_labels_and_pixels(tmp_path: Path) -> None:
    images, labels = make_set()
    base = custom.load_files(write_npz(tmp_path / "a.npz", images, labels)).meta
    relabeled = labels.copy()
    relabeled[0] = (relabeled[0] + 1) % 3
    other = custom.load_files(write_npz(tmp_path / "b.npz", images, relabeled)).meta
    changed = images.copy()
    changed[5, 0, 0] ^= 1
    pixel = custom.load_files(write_npz(tmp_path / "c.npz", changed, labels)).meta
    hashes = {base["content_sha256"], other["content_sha256"], pixel["content_sha256"]}
    assert len(hashes) == 3


def test_rgb_unlabeled_folder_and_npz(tmp_path: Path) -> None:
    images, _ = make_set(seed=3, n=12, size=6, rgb=True)
    folder = custom.load_files(write_folder(tmp_path / "colour", images, None))
    npz = custom.load_files(write_npz(tmp_path / "colour.npz", images))
    assert_same_split(folder, npz)
    assert folder.spec.shape == (3, 6, 6) and folder.spec.num_classes == 1
    assert not folder.labeled and folder.meta["labeled"] is False and not npz.labeled
    assert folder.meta["class_names"] is None
    assert int(folder.labels("train").abs().sum()) == 0
    # (C, H, W) layout: channel 0 of a loaded image is the red plane of some input image
    red_planes = {img[..., 0].tobytes() for img in images}
    assert folder.levels("test")[0, 0].numpy().tobytes() in red_planes
    assert len(folder.levels("test")) == 2  # round(12 * 0.2) = 2


def test_class_subfolders_give_sorted_labels(tmp_path: Path) -> None:
    root = tmp_path / "fruit"
    for index, name in enumerate(["zebra", "apple", "mango"]):
        for k in range(5):
            image = np.full((8, 8), 10 * k, dtype=np.uint8)
            image[0, 0] = 100 + index  # marks the folder it came from
            save_png(root / name / f"{k}.png", image)
    (root / "README.txt").write_text("not an image")
    data = custom.load_files(root)
    assert data.meta["class_names"] == ["apple", "mango", "zebra"]
    assert data.spec.num_classes == 3
    folder_of = {100: "zebra", 101: "apple", 102: "mango"}
    for split in ("train", "test"):
        for level, label in zip(data.levels(split), data.labels(split), strict=True):
            name = folder_of[int(level[0, 0, 0])]
            assert data.meta["class_names"][int(label)] == name


def test_jpeg_suffixes_and_hidden_files(tmp_path: Path) -> None:
    images, _ = make_set(n=6)
    root = tmp_path / "mixed"
    for k, image in enumerate(images):
        suffix = [".png", ".JPG", ".jpeg"][k % 3]
        path = root / f"{k}{suffix}"
        root.mkdir(exist_ok=True)
        Image.fromarray(image).save(path, format="PNG" if suffix == ".png" else "JPEG")
    save_png(root / ".hidden.png", np.zeros((5, 5), np.uint8))  # other size: must be skipped
    (root / ".cache").mkdir()
    (root / "notes.md").write_text("x")
    data = custom.load_files(root)
    assert data.meta["num_images"] == 6 and data.spec.shape == (1, 8, 8)


def test_given_train_test_split(tmp_path: Path) -> None:
    images, labels = make_set(n=30)
    names = ["a", "b", "c"]
    write_folder(tmp_path / "given" / "train", images[:20], labels[:20], names, seed=1)
    write_folder(tmp_path / "given" / "test", images[20:], labels[20:], names, seed=2)
    data = custom.load_files(tmp_path / "given")
    assert data.meta["split"] == "given"
    assert len(data.levels("train")) == 20 and len(data.levels("test")) == 10
    assert data.meta["test_fraction"] == pytest.approx(1 / 3)
    assert data.meta["class_names"] == names
    test_set = {img.tobytes() for img in images[20:]}
    assert {img[0].numpy().tobytes() for img in data.levels("test")} == test_set
    # canonical order within each split: other file names, same tensors
    write_folder(tmp_path / "again" / "train", images[:20], labels[:20], names, seed=7)
    write_folder(tmp_path / "again" / "test", images[20:], labels[20:], names, seed=8)
    assert_same_split(data, custom.load_files(tmp_path / "again"))
    # class names must agree between the splits
    write_folder(tmp_path / "bad" / "train", images[:20], labels[:20], names)
    write_folder(tmp_path / "bad" / "test", images[20:], labels[20:], ["a", "b", "x"])
    message = error_of(custom.load_files, tmp_path / "bad")
    assert "train" in message and "test" in message and "'x'" in message


def test_given_split_with_too_few_test_images(tmp_path: Path) -> None:
    images, _ = make_set(n=6)
    write_folder(tmp_path / "few" / "train", images[:5], None)
    write_folder(tmp_path / "few" / "test", images[5:], None)
    message = error_of(custom.load_files, tmp_path / "few")
    assert "test" in message and "holds 1 image" in message


def test_seeded_split_is_reproducible_and_follows_seed(tmp_path: Path) -> None:
    images, labels = make_set()
    npz = write_npz(tmp_path / "set.npz", images, labels)
    first, again = custom.load_files(npz), custom.load_files(npz)
    assert_same_split(first, again)
    other = custom.load_files(npz, split_seed=1)
    assert other.meta["split_seed"] == 1
    assert other.meta["content_sha256"] == first.meta["content_sha256"]
    assert not torch.equal(first.levels("test"), other.levels("test"))
    half = custom.load_files(npz, test_fraction=0.5)
    assert len(half.levels("test")) == 20 and half.meta["test_fraction"] == 0.5
    # the rule of the docstring, spelled out
    canonical = sorted(
        range(40),
        key=lambda i: custom.hashlib.sha256(
            int(labels[i]).to_bytes(8, "little") + images[i].tobytes()
        ).digest(),
    )
    perm = np.random.default_rng(0).permutation(40)
    expected = images[np.asarray(canonical)[perm[:8]]]
    assert np.array_equal(first.levels("test")[:, 0].numpy(), expected)


def test_results_are_not_shared_and_cache_sees_changes(tmp_path: Path) -> None:
    images, labels = make_set(n=10)
    root = write_folder(tmp_path / "edit", images, labels, ["a", "b", "c"])
    first = custom.load_files(root)
    first.train_levels.zero_()  # a caller that mutates its tensors
    second = custom.load_files(root)
    assert int(second.train_levels.sum()) > 0
    save_png(root / "a" / "extra.png", np.full((8, 8), 7, np.uint8))
    third = custom.load_files(root)
    assert third.meta["num_images"] == 11
    assert third.meta["content_sha256"] != second.meta["content_sha256"]


def test_dataset_names_are_safe(tmp_path: Path) -> None:
    images, _ = make_set(n=8)
    assert custom.safe_dataset_name("my data!") == "my-data-"
    assert custom.safe_dataset_name("__x") == "x"
    assert custom.safe_dataset_name("!!!") == "custom"
    assert custom.safe_dataset_name("digits") == "digits-custom"  # never a built-in's runs/
    data = load_dataset(f"npz:{write_npz(tmp_path / 'My Set (v2).npz', images)}")
    assert data.spec.name == "My-Set--v2-"


# ------------------------------------------------------------------------- errors


def test_mixed_sizes_name_the_file(tmp_path: Path) -> None:
    images, _ = make_set(n=6)
    root = write_folder(tmp_path / "sizes", images, None)
    save_png(root / "zz-odd.png", np.zeros((9, 9), np.uint8))
    message = error_of(custom.load_files, root)
    assert "zz-odd.png" in message and "9x9" in message and "8x8" in message


def test_mixed_modes_name_the_file(tmp_path: Path) -> None:
    images, _ = make_set(n=6)
    root = write_folder(tmp_path / "modes", images, None)
    save_png(root / "zz-colour.png", np.zeros((8, 8, 3), np.uint8))
    message = error_of(custom.load_files, root)
    assert "zz-colour.png" in message and "RGB" in message and "8x8 L" in message


def test_unsupported_modes_name_the_file_and_mode(tmp_path: Path) -> None:
    images, _ = make_set(n=6)
    root = write_folder(tmp_path / "deep", images, None)
    Image.fromarray(np.zeros((8, 8), np.uint16) + 300).save(root / "zz-16bit.png")
    message = error_of(custom.load_files, root)
    assert "zz-16bit.png" in message and ("'I;16'" in message or "'I'" in message)
    (root / "zz-16bit.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("1").save(root / "zz-bits.png")
    message = error_of(custom.load_files, root)
    assert "zz-bits.png" in message and "'1'" in message


def test_alpha_only_when_opaque(tmp_path: Path) -> None:
    images, _ = make_set(n=6, rgb=True)
    root = write_folder(tmp_path / "alpha", images, None)
    opaque = np.concatenate([images[0], np.full((8, 8, 1), 255, np.uint8)], axis=2)
    save_png(root / "opaque.png", opaque)
    data = custom.load_files(root)
    assert data.meta["num_images"] == 7 and data.spec.channels == 3
    seethrough = opaque.copy()
    seethrough[0, 0, 3] = 10
    save_png(root / "zz-clear.png", seethrough)
    message = error_of(custom.load_files, root)
    assert "zz-clear.png" in message and "RGBA" in message


def test_npz_float_images(tmp_path: Path) -> None:
    path = tmp_path / "floats.npz"
    np.savez(path, images=np.zeros((10, 8, 8), np.float32))
    message = error_of(custom.load_files, path)
    assert str(path) in message and "'images'" in message and "float32" in message


UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("called")
    return "x"


class Trap:
    """Unpickling an instance calls _record_unpickling."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_npz_object_array_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([object()], dtype=object))
    message = error_of(custom.load_files, path)
    assert str(path) in message and "'images'" in message and "object" in message
    trap = tmp_path / "trap.npz"
    np.savez(trap, images=np.zeros((8, 4, 4), np.uint8), labels=np.array([Trap()] * 8))
    message = error_of(custom.load_files, trap)
    assert "'labels'" in message and "never unpickled" in message and not UNPICKLED


def test_npz_shapes_and_labels(tmp_path: Path) -> None:
    images, labels = make_set(n=10)
    path = tmp_path / "short.npz"
    np.savez(path, images=images, labels=labels[:9])
    message = error_of(custom.load_files, path)
    assert str(path) in message and "'labels'" in message and "(9,)" in message
    np.savez(path, images=images, labels=labels.astype(np.float64))
    assert "float64" in error_of(custom.load_files, path)
    np.savez(path, images=images, labels=labels - 1)
    assert "-1" in error_of(custom.load_files, path)
    np.savez(path, images=images[:, :, :, None].repeat(2, axis=3))
    assert "(10, 8, 8, 2)" in error_of(custom.load_files, path)
    np.savez(path, pictures=images)
    assert "pictures" in error_of(custom.load_files, path)
    # (N, H, W, 1) is the same data as (N, H, W)
    flat = custom.load_files(write_npz(tmp_path / "flat.npz", images, labels))
    np.savez(path, images=images[..., None], labels=labels)
    assert_same_split(flat, custom.load_files(path))


def test_too_few_images(tmp_path: Path) -> None:
    images, _ = make_set(n=3)
    path = write_npz(tmp_path / "three.npz", images)
    message = error_of(custom.load_files, path)
    assert str(path) in message and "3 images" in message
    root = write_folder(tmp_path / "three", images, None)
    assert "three" in error_of(custom.load_files, root)
    # four is enough: 2 + 2 whatever the fraction
    data = custom.load_files(write_npz(tmp_path / "four.npz", make_set(n=4)[0]))
    assert len(data.levels("train")) == 2 and len(data.levels("test")) == 2


def test_empty_and_ambiguous_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    message = error_of(custom.load_files, empty)
    assert str(empty) in message and "no PNG/JPEG" in message
    images, labels = make_set(n=8)
    root = write_folder(tmp_path / "both", images, labels, ["a", "b", "c"])
    save_png(root / "stray.png", images[0])
    message = error_of(custom.load_files, root)
    assert "stray.png" in message and "subfolders" in message
    assert "does not exist" in error_of(load_dataset, f"folder:{tmp_path / 'nowhere'}")


# --------------------------------------------------------------------------- cards


def write_card(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_card_resolves_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = make_set()
    (tmp_path / "cards" / "data").mkdir(parents=True)
    write_npz(tmp_path / "cards" / "data" / "shapes.npz", images, labels)
    card = write_card(
        tmp_path / "cards" / "shapes.toml",
        'name = "shapes"\npath = "data/shapes.npz"\ntest_fraction = 0.5\nsplit_seed = 3\n'
        'extractor = "digits-cnn"\ndescription = "random shapes"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = load_dataset(str(card))
    assert data.spec.name == "shapes" and len(data.levels("test")) == 20
    meta = data.meta
    assert meta["path"] == str((tmp_path / "cards" / "data" / "shapes.npz").resolve())
    assert meta["card"] == str(card.resolve()) and meta["extractor"] == "digits-cnn"
    assert meta["split_seed"] == 3 and meta["test_fraction"] == 0.5
    assert_same_split(data, load_dataset(f"card:{card}"))
    plain = custom.load_files(tmp_path / "cards" / "data" / "shapes.npz", split_seed=3)
    assert plain.meta["content_sha256"] == meta["content_sha256"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "s"\npath = "d.npz"\ncolour = 1\n', "unknown card key 'colour'"),
        ('name = "s"\n', "'path' is missing"),
        ('path = "d.npz"\n', "'name' is missing"),
        ('name = "bad name/.."\npath = "d.npz"\n', "'bad name/..' is not allowed"),
        ('name = "digits"\npath = "d.npz"\n', "built-in"),
        ('name = "s.toml"\npath = "d.npz"\n', "must not end in '.toml'"),
        ('name = "s"\npath = "missing.npz"\n', "does not exist"),
        ('name = "s"\npath = "d.npz"\ntest_fraction = 1.5\n', "test_fraction"),
        ('name = "s"\npath = "d.npz"\nsplit_seed = "0"\n', "split_seed must be an integer"),
        ('name = "s"\npath = "d.npz"\nformat = "zip"\n', "'zip'"),
        ('name = "s"\npath = "d.npz"\nextractor = "digit-cnn"\n', "'digits-cnn'"),
        ('name = "s"\npath = "d.npz\n', "not valid TOML"),
    ],
)
def test_bad_cards_name_the_card(tmp_path: Path, text: str, expected: str) -> None:
    write_npz(tmp_path / "d.npz", *make_set(n=8))
    card = write_card(tmp_path / "bad.toml", text)
    message = error_of(load_dataset, str(card))
    assert str(card.resolve()) in message and expected in message


def test_card_split_settings_conflict_with_given_split(tmp_path: Path) -> None:
    images, _ = make_set(n=8)
    write_folder(tmp_path / "given" / "train", images[:4], None)
    write_folder(tmp_path / "given" / "test", images[4:], None)
    ok = write_card(tmp_path / "ok.toml", 'name = "g"\npath = "given"\n')
    assert load_dataset(str(ok)).meta["split"] == "given"
    card = write_card(tmp_path / "g.toml", 'name = "g"\npath = "given"\nsplit_seed = 2\n')
    assert "split_seed" in error_of(load_dataset, str(card))


def test_registered_card_found_by_name(
    tmp_path: Path, no_user_cards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, labels = make_set()
    data_path = write_npz(tmp_path / "blobs.npz", images, labels)
    write_card(no_user_cards / "whatever.toml", f'name = "blobs"\npath = "{data_path}"\n')
    write_card(no_user_cards / "broken.toml", "name = \n")
    assert not custom.is_custom("blobs-nope") and not custom.is_custom("digits")
    with caplog.at_level(logging.WARNING):
        assert custom.is_custom("blobs")
        assert custom.registered_cards() == {"blobs": (no_user_cards / "whatever.toml").resolve()}
    assert "broken.toml" in caplog.text
    data = load_dataset("blobs")
    assert data.spec.name == "blobs" and data.meta["format"] == "npz"
    assert_same_split(data, custom.load_files(data_path))
    assert "Did you mean 'blobs'" in error_of(load_dataset, "blobz")


def test_card_dirs_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    monkeypatch.setenv("GENBENCH_DATASETS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert custom.card_dirs() == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv("GENBENCH_DATASETS")
    assert custom.card_dirs() == [Path.home() / ".config" / "genbench" / "datasets"]


def test_register_card_copies_and_refuses_conflicts(tmp_path: Path, no_user_cards: Path) -> None:
    images, labels = make_set()
    (tmp_path / "src").mkdir()
    write_npz(tmp_path / "src" / "rings.npz", images, labels)
    card = write_card(tmp_path / "src" / "rings.toml", 'name = "rings"\npath = "rings.npz"\n')
    registered = custom.register_card(card)
    assert registered == no_user_cards / "rings.toml"
    assert str((tmp_path / "src" / "rings.npz").resolve()) in registered.read_text()
    card.unlink()  # the copy stands on its own
    assert load_dataset("rings").meta["card"] == str(registered.resolve())
    # the same card again: fine, nothing changes
    card = write_card(tmp_path / "src" / "rings.toml", 'name = "rings"\npath = "rings.npz"\n')
    assert custom.register_card(card) == registered
    # another card under that name: refused
    other = write_card(
        tmp_path / "src" / "other.toml", 'name = "rings"\npath = "rings.npz"\nsplit_seed = 4\n'
    )
    assert "already registered" in error_of(custom.register_card, other)
    # a card whose data does not load is not registered
    (tmp_path / "src" / "bad.npz").write_bytes(b"not a zip")
    bad = write_card(tmp_path / "src" / "bad.toml", 'name = "bad"\npath = "bad.npz"\n')
    assert "bad.npz" in error_of(custom.register_card, bad)
    assert not (no_user_cards / "bad.toml").exists()


def test_load_dataset_end_to_end(tmp_path: Path) -> None:
    images, labels = make_set()
    root = write_folder(tmp_path / "faces", images, labels, ["x", "y", "z"])
    data = load_dataset(f"folder:{root}", None, False)
    assert data.spec.name == "faces" and data.images("train").dtype == torch.float32
    assert float(data.images("train").max()) <= 1.0 and data.labeled
    assert_same_split(
        data, load_dataset(f"npz:{write_npz(tmp_path / 'faces.npz', images, labels)}")
    )
    digits = load_dataset("digits")
    assert digits.spec.name == "digits" and digits.meta == {} and digits.labeled
    assert custom.load_custom("digits") is None and custom.load_custom("mnist") is None
    assert "Did you mean 'digits'" in error_of(load_dataset, "digit")
