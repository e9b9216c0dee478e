"""Dataset readers, the restricted unpickler, caching, the loader and the embedded sample."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from earlyprune.data import DataFormatError, DatasetNotFoundError, TensorLoader, load_dataset
from earlyprune.data import cache as cache_module
from earlyprune.data.cifar_pickle import read_cifar_batch
from earlyprune.data.idx import read_idx, write_idx
from earlyprune.data.image_folder import read_image_folder, safe_extract

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_MNIST = Path(os.environ.get("EARLYPRUNE_DATA", SHARED)) / "mnist"


@pytest.mark.skipif(not REAL_MNIST.exists(), reason="real MNIST not available")
def test_real_mnist_headers():
    images = read_idx(REAL_MNIST / "t10k-images-idx3-ubyte.gz", expected_dims=3)
    labels = read_idx(REAL_MNIST / "t10k-labels-idx1-ubyte.gz", expected_dims=1)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    train = read_idx(REAL_MNIST / "train-labels-idx1-ubyte.gz")
    assert train.shape == (60000,)


def test_idx_round_trip_and_corruptions(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    raw = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "magic").write_bytes(b"\x01" + raw[1:])
    with pytest.raises(DataFormatError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(DataFormatError, match="short.*truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataFormatError, match="expected 1 dimensions"):
        read_idx(tmp_path / "a.idx", expected_dims=1)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataFormatError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


def write_cifar_batch(path, images_nhwc, labels):
    data = images_nhwc.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"labels": list(labels), b"data": data}, f, protocol=2)


def test_cifar_batch_pixels_in_channel_planes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    write_cifar_batch(tmp_path / "data_batch_1", images, [4, 0, 9])
    loaded, labels = read_cifar_batch(tmp_path / "data_batch_1")
    assert np.array_equal(loaded, images) and labels.tolist() == [4, 0, 9]
    # Independently: byte 1024 of a row is the green value of pixel (0, 0).
    raw = pickle.loads((tmp_path / "data_batch_1").read_bytes())[b"data"]
    assert raw[1, 1024] == images[1, 0, 0, 1]


def test_malicious_cifar_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}))
    with pytest.raises(DataFormatError, match="execute code"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_cifar_python_folder_loads_and_caches(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), [0, 1, 2, 3])
    calls = []
    real = cache_module.cached_arrays

    def counting(cache_dir, name, sources, build):
        return real(cache_dir, name, sources, lambda: (calls.append(name), build())[1])

    monkeypatch.setattr("earlyprune.data.registry.cached_arrays", counting)
    train, test = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    again, _ = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert calls == ["cifar10"] and torch.equal(again.images, train.images)
    write_cifar_batch(folder / "test_batch", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), [0] * 5)
    _, changed = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert calls == ["cifar10", "cifar10"] and changed.images.shape[0] == 5


def test_image_folder_and_safe_tar(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls, value in (("cat", 10), ("ant", 200)):
            d = tmp_path / "tree" / split / cls
            d.mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(d / "0.png")
    images, labels, classes = read_image_folder(tmp_path / "tree" / "train")
    assert classes == ["ant", "cat"] and labels.tolist() == [0, 1]
    assert images[0, 0, 0, 0] == 200 and images[1, 0, 0, 0] == 10
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataFormatError, match="outside"):
        safe_extract(evil, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()


def test_missing_dataset_lists_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "fashion-mnist") in message and "FashionMNIST/raw" in message
    assert "EARLYPRUNE_DATA" in message and "https://" in message
    with pytest.raises(ValueError, match="known datasets: mnist, fashion-mnist, cifar10"):
        load_dataset("imagenet")


def test_loader_covers_each_sample_once_and_is_reproducible():
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 1, 2, 2).clone()
    labels = torch.arange(10)
    loader = TensorLoader(images, labels, batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 3 and loader.num_samples == 10
    epoch1 = torch.cat([y for _, y in loader])
    epoch2 = torch.cat([y for _, y in loader])
    assert sorted(epoch1.tolist()) == list(range(10)) and not torch.equal(epoch1, epoch2)
    again = torch.cat([y for _, y in TensorLoader(images, labels, 4, shuffle=True, seed=3)])
    assert torch.equal(again, epoch1)
    for x, y in TensorLoader(images, labels, 4):
        assert torch.equal(x[:, 0, 0, 0], y.float())


def test_augmentation_really_crops_and_flips():
    torch.manual_seed(0)
    image = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(64, 3, 1, 1)
    loader = TensorLoader(image, torch.zeros(64, dtype=torch.long), 64, augment=True, seed=0)
    out, _ = next(iter(loader))
    assert out.shape == image.shape
    flipped = sum(torch.equal(o, image[0].flip(-1)) for o in out)
    identity = sum(torch.equal(o, image[0]) for o in out)
    assert flipped > 0 and identity > 0  # some uncropped images, flipped and not
    assert any(bool((o == 0).any()) for o in out)  # zero padding shows up after a shifted crop


def test_mnist_sample_is_stratified_and_not_augmented():
    train, test = load_dataset("mnist-sample")
    assert len(train) == 6000 and len(test) == 1000
    assert train.labels.bincount().tolist() == [600] * 10 and test.labels.bincount().tolist() == [100] * 10
    x, _ = next(iter(train.loader(8, augment=True)))
    assert torch.equal(x, train.images[:8])
    small = train.subset(25)
    assert len(small) == 25 and small.labels.bincount().tolist() == [3] * 5 + [2] * 5


def test_mnist_and_fashion_mnist_folders_are_not_mistaken_for_each_other(tmp_path):
    # Same file names and format; the first training labels of the canonical files tell them apart.
    folder = tmp_path / "digits"
    folder.mkdir()
    images = np.zeros((12, 28, 28), dtype=np.uint8)
    for name, array in [("train-images-idx3-ubyte", images), ("t10k-images-idx3-ubyte", images),
                        ("train-labels-idx1-ubyte", np.array([5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5], dtype=np.uint8)),
                        ("t10k-labels-idx1-ubyte", np.zeros(12, dtype=np.uint8))]:
        write_idx(folder / name, array)
    with pytest.raises(DatasetNotFoundError, match="holds mnist, not fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=folder, cache_dir=tmp_path / "cache")
    train, _ = load_dataset("mnist", data_dir=folder, cache_dir=tmp_path / "cache")
    assert len(train) == 12


def test_images_have_the_standard_nchw_strides_even_with_one_channel():
    # Strides (HW, 1, W, 1) would be "contiguous" and channels-last at once; torch's CPU convolution
    # backward has crashed on such inputs, so the datasets hand out the plain layout.
    train, _ = load_dataset("mnist-sample")
    n, c, h, w = train.images.shape
    assert c == 1 and train.images.stride() == (c * h * w, h * w, w, 1)


def _tiny_tree_archive(tmp_path: Path) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        d = tmp_path / "src" / "tree" / split / "cat"
        d.mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), 7, dtype=np.uint8)).save(d / "0.png")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "tree", arcname="tree")
    return archive


def test_an_archive_is_published_whole_so_concurrent_readers_never_see_it_half_extracted(tmp_path, monkeypatch):
    """Two sweep workers reading CIFAR-10's tarball for the first time once read each other's half-written
    JPEGs (extracted in place). Now the tree appears under its final name only once complete; a process that
    finds the other's tree already there uses it; a killed process's staging folder is cleared once stale."""
    from earlyprune.data import image_folder, registry

    archive = _tiny_tree_archive(tmp_path)
    target = tmp_path / "cache" / "extracted-x"
    seen_during = []
    real = image_folder.safe_extract

    def watched(source, destination):
        real(source, destination)
        seen_during.append(target.exists())  # the final name must not exist while extracting

    monkeypatch.setattr(registry, "safe_extract", watched)
    registry.extract_once(archive, target)
    assert seen_during == [False] and (target / "complete").exists()
    assert (target / "tree" / "train" / "cat" / "0.png").stat().st_size > 0
    assert [p.name for p in target.parent.iterdir()] == ["extracted-x"]  # no staging folder left behind

    def another_process_wins(source, destination):  # someone else publishes first, while we extract
        real(source, destination)
        if not target.exists():
            real(source, target)
            (target / "complete").write_bytes(b"ok\n")

    shutil.rmtree(target)
    monkeypatch.setattr(registry, "safe_extract", another_process_wins)
    registry.extract_once(archive, target)  # no error: the other's finished tree is used
    assert (target / "complete").exists() and [p.name for p in target.parent.iterdir()] == ["extracted-x"]

    stale = target.parent / "extracted-x.partial-dead"  # a killed process's staging folder, two hours old
    stale.mkdir()
    os.utime(stale, (0, 0))
    fresh = target.parent / "extracted-x.partial-live"  # another process's, still extracting
    fresh.mkdir()
    shutil.rmtree(target)
    monkeypatch.setattr(registry, "safe_extract", real)
    registry.extract_once(archive, target)
    assert (target / "complete").exists() and not stale.exists() and fresh.exists()
    assert (target.stat().st_mode & 0o077) == (0o777 & ~_umask() & 0o077)  # readable as the umask allows


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
