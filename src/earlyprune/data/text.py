"""Sentence classification in the format of Kim (2014)'s CNN data: SST-2 and TREC.

Each file holds one example a line, ``LABEL<space>tokenised sentence``, ``LABEL`` an integer class:

* SST-2 (Socher et al. 2013), binary sentiment: ``stsa.binary.train`` (6,920), ``stsa.binary.dev`` (872),
  ``stsa.binary.test`` (1,821), labels 0/1. ``load_dataset("sst2")`` returns (train, test); the dev
  split is in ``load_splits("sst2")["dev"]``.
* TREC (Li and Roth 2002), question type, 6 coarse classes: ``TREC.train.all`` (5,452),
  ``TREC.test.all`` (500), labels 0-5.

Processing, as in Kim's CNN recipe except that the text is used as given (no lower-casing, no cleaning:
the files are tokenised already): whitespace tokenisation; a vocabulary from the **training split only**,
``<pad>`` = 0, ``<unk>`` = 1, then the tokens seen at least ``min_count`` times (default 1) by
descending count, ties alphabetically; sentences truncated or right-padded with ``<pad>`` to ``seq_len``
= the longest training sentence, at most :data:`MAX_SEQ_LEN` (64): 52 tokens for SST-2 (its longest
test sentence, 56, loses 4), 37 for TREC. Inputs are int64 (N, seq_len), labels int64 (N,).

Files are decoded as UTF-8, or Latin-1 where they are not UTF-8 (the TREC files hold a few Latin-1
bytes). A line without a label, with a label that is not one of the classes, with no sentence, or a file
that ends in the middle of a line (no final newline: truncated) is a :class:`DataFormatError` that names
the file and the line. Reading takes a few tens of milliseconds, so nothing is cached.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import DataFormatError
from .split import DatasetSplit

PAD, UNK = "<pad>", "<unk>"
MAX_SEQ_LEN = 64


def decode_text(path: Path) -> str:
    """The text of ``path``: UTF-8, else Latin-1 (which decodes any byte)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_labelled_sentences(path: Path, num_classes: int) -> tuple[list[int], list[list[str]]]:
    """Labels and token lists of a ``LABEL sentence`` file, every line checked."""
    path = Path(path)
    text = decode_text(path)
    if not text:
        raise DataFormatError(f"{path}: the file is empty")
    if not text.endswith("\n"):
        line = text.count("\n") + 1
        raise DataFormatError(f"{path}, line {line}: the file ends in the middle of a line (no final newline); "
                              "it is truncated — get it again")
    labels: list[int] = []
    sentences: list[list[str]] = []
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        line = line.rstrip("\r")
        head, _, rest = line.partition(" ")
        tokens = rest.split()
        if not head.isdigit() or not 0 <= int(head) < num_classes:
            raise DataFormatError(f"{path}, line {number}: expected 'LABEL sentence' with LABEL in "
                                  f"0..{num_classes - 1}, got {line[:60]!r}")
        if not tokens:
            raise DataFormatError(f"{path}, line {number}: label {head} but no sentence")
        labels.append(int(head))
        sentences.append(tokens)
    return labels, sentences


def build_vocab(sentences: Sequence[Sequence[str]], min_count: int = 1) -> list[str]:
    """``[<pad>, <unk>, tokens seen >= min_count times by descending count, ties alphabetically]``."""
    counts = Counter(token for sentence in sentences for token in sentence)
    kept = sorted((t for t, c in counts.items() if c >= min_count and t not in (PAD, UNK)),
                  key=lambda t: (-counts[t], t))
    return [PAD, UNK, *kept]


def encode(sentences: Sequence[Sequence[str]], vocab: Sequence[str], seq_len: int) -> torch.Tensor:
    """Token ids (N, seq_len) int64: unknown tokens -> 1, truncated or right-padded with 0."""
    index = {token: i for i, token in enumerate(vocab)}
    out = np.zeros((len(sentences), seq_len), dtype=np.int64)
    for row, sentence in enumerate(sentences):
        ids = [index.get(token, 1) for token in sentence[:seq_len]]
        out[row, : len(ids)] = ids
    return torch.from_numpy(out)


def sentence_splits(name: str, files: dict[str, Path], num_classes: int, class_names: Sequence[str],
                    min_count: int = 1, max_seq_len: int = MAX_SEQ_LEN) -> dict[str, DatasetSplit]:
    """Every split of ``files`` (``{"train": path, ...}``) encoded with the training split's vocabulary."""
    read = {split: read_labelled_sentences(path, num_classes) for split, path in files.items()}
    train_sentences = read["train"][1]
    vocab = build_vocab(train_sentences, min_count)
    seq_len = min(max_seq_len, max(len(s) for s in train_sentences))
    out = {}
    for split, (labels, sentences) in read.items():
        info = {"file": str(files[split]), "examples": len(labels), "min_count": min_count,
                "truncated": sum(len(s) > seq_len for s in sentences)}
        out[split] = DatasetSplit(name, encode(sentences, vocab, seq_len), torch.tensor(labels, dtype=torch.int64),
                                  num_classes, class_names, False, task="classification", vocab=vocab,
                                  seq_len=seq_len, info=info)
    return out


SST2_FILES = {"train": "stsa.binary.train", "dev": "stsa.binary.dev", "test": "stsa.binary.test"}
TREC_FILES = {"train": "TREC.train.all", "test": "TREC.test.all"}
#: The coarse classes behind the files' numbers, told by their counts, which are Li and Roth's
#: (train/test: DESC 1,162/138, ENTY 1,250/94, ABBR 86/9, HUM 1,223/65, LOC 835/81, NUM 896/113).
TREC_CLASSES = ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]


def _locator(name: str, names: dict[str, str], num_classes: int, classes: Sequence[str]):
    def locate(path: Path, cache: Path) -> Callable[[], dict[str, DatasetSplit]] | None:
        files = {split: path / file for split, file in names.items()}
        if not path.is_dir() or not all(f.is_file() for f in files.values()):
            return None
        return lambda: sentence_splits(name, files, num_classes, classes)

    return locate


locate_sst2 = _locator("sst2", SST2_FILES, 2, ["negative", "positive"])
locate_trec = _locator("trec", TREC_FILES, 6, TREC_CLASSES)
