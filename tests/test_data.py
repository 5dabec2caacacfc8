"""The data loaders: packaged sets, toy distributions, and MNIST / CIFAR-10 on small files the tests write."""

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest

from kexue import data
from kexue.data import cifar10_loader as cifar_module
from kexue.data import mnist_loader as mnist_module
from kexue.data import standins as standin_module
from kexue.data.common import md5


def test_digits():
    split = data.digits()
    assert split.x.shape == (1797, 8, 8, 1) and split.x.dtype == np.float32
    assert split.x.min() == 0.0 and split.x.max() == 1.0
    assert set(np.unique(split.y)) == set(range(10))


def test_image_patches_are_crops_of_the_sample_photos():
    from sklearn.datasets import load_sample_images

    patches = data.image_patches(5, size=16, seed=3)
    assert patches.shape == (5, 16, 16, 3) and patches.dtype == np.float32
    assert np.array_equal(patches, data.image_patches(5, size=16, seed=3))
    photos = [p / 255.0 for p in load_sample_images().images]
    corner = patches[0][0, 0]
    assert any(np.isclose(p, corner, atol=1e-6).all(axis=-1).any() for p in photos)
    with pytest.raises(ValueError, match="size"):
        data.image_patches(1, size=1000)
    with pytest.raises(ValueError, match="n"):
        data.image_patches(0)


@pytest.mark.parametrize("name", data.TOY_2D)
def test_toy_distributions(name):
    points = data.toy_2d(name, 500, seed=1)
    assert points.shape == (500, 2) and points.dtype == np.float32
    assert np.abs(points).max() < 3.0
    assert np.array_equal(points, data.toy_2d(name, 500, seed=1))


def test_toy_distribution_shapes():
    ring = data.toy_2d("ring", 2000)
    assert abs(np.linalg.norm(ring, axis=1).mean() - 1.5) < 0.01
    board = data.toy_2d("checkerboard", 2000)
    cells = np.floor(board + 2).astype(int)
    assert np.all((cells.sum(axis=1) % 2) == 0)  # only black cells
    with pytest.raises(ValueError, match="`name` must be one of"):
        data.toy_2d("spiral", 10)


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        arrays[prefix] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", arrays[prefix][0])
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", arrays[prefix][1])
    return tmp_path, arrays


def test_mnist_reads_idx_files(tiny_mnist):
    root, arrays = tiny_mnist
    split = data.mnist("test", root=root)
    assert split.x.shape == (3, 28, 28, 1) and split.x.dtype == np.float32
    assert np.array_equal(split.x[..., 0], arrays["t10k"][0] / np.float32(255))
    assert np.array_equal(split.y, arrays["t10k"][1])
    assert split.name == "MNIST (test)"


def test_mnist_downloads_and_checks_md5(tiny_mnist, tmp_path_factory, monkeypatch):
    mirror, _ = tiny_mnist
    checksums = {name: md5(mirror / name) for name in mnist_module.FILES}
    monkeypatch.setattr(mnist_module, "FILES", checksums)
    target = tmp_path_factory.mktemp("download")
    dead = (tmp_path_factory.mktemp("empty").as_uri() + "/",)
    split = data.mnist("train", root=target, download=True, mirrors=dead + (mirror.as_uri() + "/",))
    assert len(split.x) == 5 and (target / "train-images-idx3-ubyte.gz").exists()

    monkeypatch.setattr(mnist_module, "FILES", {name: "0" * 32 for name in checksums})
    with pytest.raises(OSError, match="checksum mismatch"):
        data.mnist("test", root=tmp_path_factory.mktemp("bad"), download=True, mirrors=(mirror.as_uri() + "/",))


def test_mnist_never_switches_silently(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="`split` must be 'train' or 'test'"):
        data.mnist("validation", root=tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not an idx file"))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(ValueError, match="not an IDX file"):
        data.mnist("train", root=tmp_path)


def write_cifar(path, n_per_batch=2):
    rng = np.random.default_rng(0)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            pixels = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n_per_batch).tolist()
            batches[name] = (pixels, labels)
            blob = pickle.dumps({b"data": pixels, b"labels": labels})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return batches


def test_cifar10_reads_the_python_archive(tmp_path):
    batches = write_cifar(tmp_path / cifar_module.ARCHIVE)
    train = data.cifar10("train", root=tmp_path)
    test = data.cifar10("test", root=tmp_path)
    assert train.x.shape == (10, 32, 32, 3) and test.x.shape == (2, 32, 32, 3)
    pixels, labels = batches["test_batch"]
    # CIFAR stores each image as 1024 red, then 1024 green, then 1024 blue values, row-major
    assert test.x[1, 0, 2, 1] == np.float32(pixels[1, 1024 + 2]) / np.float32(255)
    assert test.y.tolist() == labels


def test_cifar10_download(tmp_path_factory):
    source = tmp_path_factory.mktemp("mirror") / cifar_module.ARCHIVE
    write_cifar(source)
    target = tmp_path_factory.mktemp("download")
    split = data.cifar10("test", root=target, download=True, urls=(source.as_uri(),), checksum=md5(source))
    assert len(split.x) == 2
    with pytest.raises(OSError, match="checksum mismatch"):
        data.cifar10("test", root=tmp_path_factory.mktemp("bad"), download=True, urls=(source.as_uri(),))
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.cifar10("test", root=tmp_path_factory.mktemp("none"))


@pytest.mark.parametrize("name, shape, train", [("mnist", (60_000, 28, 28, 1), True), ("mnist", (10_000, 28, 28, 1), False),
                                                ("cifar10", (50_000, 32, 32, 3), True)])
def test_standins_have_the_real_shapes_and_say_what_they_are(name, shape, train):
    split = data.standin(name, "train" if train else "test")
    assert split.x.shape == shape and split.x.dtype == np.float32 and split.y.dtype == np.int64
    assert len(split.y) == shape[0] and set(np.unique(split.y)) <= set(range(10))
    assert 0.0 <= split.x.min() and split.x.max() <= 1.0 and split.x.std() > 0.1
    assert data.is_standin(split) and split.name.startswith("stand-in for")
    again = data.standin(name, "train" if train else "test")
    assert np.array_equal(split.x[:100], again.x[:100])  # deterministic


def test_mnist_standin_keeps_digits_inside_the_frame_like_mnist():
    split = data.standin("mnist", n=500)
    ink = split.x[..., 0].sum(axis=0)
    assert ink[:2].sum() == 0 and ink[-2:].sum() == 0 and ink[:, :2].sum() == 0 and ink[:, -2:].sum() == 0
    assert split.x[..., 0].max(axis=(1, 2)).min() > 0.5  # every image holds a digit


def test_full_scale_uses_a_standin_only_in_a_rehearsal(tmp_path, monkeypatch):
    monkeypatch.setenv("KEXUE_REHEARSAL", "1")
    monkeypatch.delenv("KEXUE_SCALE", raising=False)
    split = data.full_scale("mnist", "test", root=tmp_path)  # no files there: the stand-in
    assert data.is_standin(split) and split.x.shape == (10_000, 28, 28, 1)
    monkeypatch.setenv("KEXUE_REHEARSAL", "0")
    monkeypatch.setattr(standin_module, "LOADERS", {"mnist": _refuse_download, "cifar10": _refuse_download})
    with pytest.raises(OSError, match="download attempted"):  # outside a rehearsal: the real loader, downloading
        data.full_scale("mnist", "test", root=tmp_path)
    with pytest.raises(ValueError, match="name"):
        data.full_scale("svhn")


def test_full_scale_prefers_real_files_in_a_rehearsal(tmp_path, monkeypatch):
    monkeypatch.setenv("KEXUE_REHEARSAL", "1")
    monkeypatch.delenv("KEXUE_SCALE", raising=False)
    real = data.Split(np.zeros((3, 28, 28, 1), np.float32), np.zeros(3, np.int64), "MNIST (test)")
    calls = []

    def loader(split, root=None, download=False):
        calls.append(download)
        return real

    monkeypatch.setattr(standin_module, "LOADERS", {"mnist": loader, "cifar10": loader})
    assert data.full_scale("mnist", "test") is real and calls == [False]  # never downloads in a rehearsal


def _refuse_download(split, root=None, download=False):
    if download:
        raise OSError("download attempted")
    raise FileNotFoundError("absent")
