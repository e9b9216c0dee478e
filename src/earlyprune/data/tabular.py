"""Tabular regression: California Housing (Pace and Barry 1997), ``housing.csv`` as in the widely used
copy (a header row, ten columns, 20,640 block groups, 207 empty ``total_bedrooms``, a categorical
``ocean_proximity``).

* Split: a fixed permutation of the rows, ``numpy.random.default_rng(0).permutation(n)``; its first
  80% (``int(0.8 * n)``: 16,512 rows) train, the other 4,128 test.
* Features, 13 in this order: the eight numeric columns (longitude, latitude, housing_median_age,
  total_rooms, total_bedrooms, population, households, median_income), each standardised with the
  mean and standard deviation (ddof 0) of the **training** rows, after empty ``total_bedrooms`` are
  filled with the training rows' median; then one 0/1 column per ``ocean_proximity`` category, sorted
  (``<1H OCEAN, INLAND, ISLAND, NEAR BAY, NEAR OCEAN``; the categories of the whole file, so the five
  ISLAND rows get a column wherever the split puts them). float32 (N, 13).
* Target: ``median_house_value`` in units of $100,000 (not standardised; the data cap it at 5.00001),
  float32 (N, 1), the shape of a one-output model's prediction, so ``F.mse_loss(model(x), y)`` needs
  no reshaping. The statistics are in ``split.info``.

A row with a wrong number of fields, a value that is not a number (an empty value is allowed in
``total_bedrooms`` only), an empty category or a header without these columns is a
:class:`DataFormatError` that names the file and the line. Parsing takes about 0.1 s; nothing is cached.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import DataFormatError
from .split import DatasetSplit

NUMERIC = ("longitude", "latitude", "housing_median_age", "total_rooms", "total_bedrooms", "population",
           "households", "median_income")
TARGET, CATEGORY, IMPUTED = "median_house_value", "ocean_proximity", "total_bedrooms"
TARGET_SCALE = 100_000.0
TRAIN_FRACTION, SPLIT_SEED = 0.8, 0


def read_housing_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Numeric features (n, 8) float64 with NaN for empty ``total_bedrooms``, target (n,) in dollars,
    and the category of each row."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise DataFormatError(f"{path}, line {text.count(chr(10)) + 1}: the file ends in the middle of a line "
                              "(no final newline); it is truncated — get it again")
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    wanted = (*NUMERIC, TARGET, CATEGORY)
    if header is None or set(wanted) - set(header):
        raise DataFormatError(f"{path}, line 1: the header must name the columns {', '.join(wanted)}; "
                              f"got {header!r}")
    columns = [header.index(c) for c in (*NUMERIC, TARGET)]
    category_column, imputed = header.index(CATEGORY), NUMERIC.index(IMPUTED)
    values: list[list[float]] = []
    categories: list[str] = []
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataFormatError(f"{path}, line {number}: {len(row)} fields, the header has {len(header)}")
        parsed = []
        for k, column in enumerate(columns):
            field = row[column].strip()
            if not field and k == imputed:
                parsed.append(float("nan"))
                continue
            try:
                parsed.append(float(field))
            except ValueError:
                raise DataFormatError(f"{path}, line {number}: {header[column]} is {field!r}, not a number") from None
            if not np.isfinite(parsed[-1]):
                raise DataFormatError(f"{path}, line {number}: {header[column]} is {field!r}")
        category = row[category_column].strip()
        if not category:
            raise DataFormatError(f"{path}, line {number}: empty {CATEGORY}")
        values.append(parsed)
        categories.append(category)
    if not values:
        raise DataFormatError(f"{path}: no rows after the header")
    table = np.asarray(values, dtype=np.float64)
    return table[:, :-1], table[:, -1], categories


def housing_splits(path: Path, name: str = "california-housing") -> dict[str, DatasetSplit]:
    """``{"train": ..., "test": ...}`` of ``housing.csv`` (see the module docstring)."""
    numeric, target, categories = read_housing_csv(path)
    n = len(target)
    if n < 2:
        raise DataFormatError(f"{path}: {n} row, too few to split into train and test")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = max(1, min(n - 1, int(TRAIN_FRACTION * n)))
    index = {"train": order[:cut], "test": order[cut:]}
    train = numeric[index["train"]]
    imputed = NUMERIC.index(IMPUTED)
    known = train[:, imputed][~np.isnan(train[:, imputed])]
    if known.size == 0:
        raise DataFormatError(f"{path}: every training row's {IMPUTED} is empty; nothing to impute from")
    median = float(np.median(known))
    filled = numeric.copy()
    filled[np.isnan(filled[:, imputed]), imputed] = median
    mean = filled[index["train"]].mean(axis=0)
    std = filled[index["train"]].std(axis=0)
    std[std == 0] = 1.0  # a constant column stays at zero rather than dividing by zero
    names = sorted(set(categories))
    one_hot = np.zeros((n, len(names)), dtype=np.float64)
    one_hot[np.arange(n), [names.index(c) for c in categories]] = 1.0
    features = np.concatenate([(filled - mean) / std, one_hot], axis=1).astype(np.float32)
    values = (target / TARGET_SCALE).astype(np.float32)[:, None]
    feature_names = [*NUMERIC, *(f"{CATEGORY}={c}" for c in names)]
    info = {"file": str(path), "features": feature_names, "feature_mean": mean.tolist(),
            "feature_std": std.tolist(), "imputed_median": median, "target_scale": TARGET_SCALE,
            "split_seed": SPLIT_SEED, "train_fraction": TRAIN_FRACTION}
    out = {}
    for split, rows in index.items():
        out[split] = DatasetSplit(name, torch.from_numpy(features[rows]), torch.from_numpy(values[rows]), 1,
                                  [TARGET], False, task="regression", info={**info, "rows": rows.tolist()})
    return out


def locate_housing(path: Path, cache: Path) -> Callable[[], dict[str, DatasetSplit]] | None:
    if (path / "housing.csv").is_file():
        return lambda: housing_splits(path / "housing.csv")
    if path.is_file() and path.name == "housing.csv":
        return lambda: housing_splits(path)
    return None
