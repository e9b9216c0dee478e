"""Character-level language modelling on Tiny Shakespeare (Karpathy's char-rnn corpus, ``input.txt``).

* Split: the first 90% of the characters (``int(0.9 * n)``: 1,003,854 of 1,115,394) train, the last
  10% (111,540) are the validation text, which ``load_dataset`` returns as the test split (the split
  of char-rnn and nanoGPT's ``shakespeare_char``).
* Vocabulary: the characters of the training part, sorted by code point (65 on the real file, so ids
  are those of nanoGPT's ``shakespeare_char``); only if the validation part holds a character the
  training part lacks is one ``<unk>`` entry appended, and such characters map to it.
* Examples: non-overlapping windows of ``seq_len`` characters (default :data:`SEQ_LEN` = 128);
  inputs are the window, targets the same window shifted by one character, both int64 (N, seq_len).
  Window ``i`` covers characters ``[i*seq_len, (i+1)*seq_len)``, its targets ``[i*seq_len + 1,
  (i+1)*seq_len + 1)``; the tail that fills no window is dropped. At 128: 7,842 training windows
  (1,003,776 predicted characters, 99.99% of the part) and 871 validation windows.

The file must be UTF-8; bytes that are not (a file cut inside a character, say) or a part too short for
one window are a :class:`DataFormatError` naming the file and the line. Reading and encoding the real
file takes about 0.1 s, so nothing is cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import DataFormatError
from .split import DatasetSplit

SEQ_LEN = 128
TRAIN_FRACTION = 0.9
UNK = "<unk>"


def read_utf8(path: Path) -> str:
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        where = "its end (the file is truncated inside a character)" if exc.end >= len(raw) else f"byte {exc.start}"
        raise DataFormatError(f"{path}, line {line}: not UTF-8 text at {where}") from exc


def char_splits(path: Path, seq_len: int = SEQ_LEN, name: str = "tinyshakespeare") -> dict[str, DatasetSplit]:
    """``{"train": ..., "test": ...}`` windows of ``path`` (see the module docstring)."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    text = read_utf8(path)
    cut = int(TRAIN_FRACTION * len(text))
    parts = {"train": text[:cut], "test": text[cut:]}
    for split, part in parts.items():
        if len(part) < seq_len + 1:
            raise DataFormatError(
                f"{path}, line {text.count(chr(10)) + 1}: {len(text)} characters leave {len(part)} for the "
                f"{split} part, fewer than one window of {seq_len} + 1 (truncated?)")
    vocab = sorted(set(parts["train"]))
    if set(parts["test"]) - set(vocab):
        vocab.append(UNK)
    codes = np.full(max(map(ord, set(text))) + 1, len(vocab) - 1, dtype=np.int64)  # unseen -> <unk>
    for i, char in enumerate(vocab if vocab[-1] != UNK else vocab[:-1]):
        codes[ord(char)] = i
    out = {}
    for split, part in parts.items():
        ids = codes[np.frombuffer(part.encode("utf-32-le"), dtype=np.uint32)]
        count = (len(ids) - 1) // seq_len
        inputs = torch.from_numpy(ids[: count * seq_len].reshape(count, seq_len).copy())
        targets = torch.from_numpy(ids[1 : count * seq_len + 1].reshape(count, seq_len).copy())
        info = {"file": str(path), "characters": len(part), "windows": count,
                "first_character": 0 if split == "train" else cut}
        out[split] = DatasetSplit(name, inputs, targets, len(vocab), vocab, False, task="language_modelling",
                                  vocab=vocab, seq_len=seq_len, info=info)
    return out


def locate_tinyshakespeare(path: Path, cache: Path) -> Callable[[], dict[str, DatasetSplit]] | None:
    for candidate in (path / "input.txt", path / "tinyshakespeare.txt"):
        if candidate.is_file():
            return lambda: char_splits(candidate)
    if path.is_file() and path.name in ("input.txt", "tinyshakespeare.txt"):
        return lambda: char_splits(path)
    return None
