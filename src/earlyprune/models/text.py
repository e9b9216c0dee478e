"""Sentence classifiers on token ids (B, seq_len) int64 -> logits (B, num_classes).

Both carry ``input_shape = (seq_len,)``, ``input_dtype = torch.int64``, ``vocab_size``, ``seq_len`` and
``example_input(batch_size)`` (all-ones token ids). A floating input of whole numbers is taken as token
ids, so the all-ones float input that SynFlow and ``metrics.report`` build from ``input_shape`` works
(it means token 1, ``<unk>``, at every position). Token 0 is ``<pad>``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import check_positive, check_width, scaled, token_ids
from ._transformer import Block, positions


class TokenModel(nn.Module):
    """What the token models share: their sizes as attributes and an example input."""

    input_dtype = torch.int64

    def _sizes(self, vocab_size: int, seq_len: int) -> None:
        self.vocab_size = check_positive("vocab_size", vocab_size)
        self.seq_len = check_positive("seq_len", seq_len)
        self.input_shape = (seq_len,)

    def example_input(self, batch_size: int = 1) -> Tensor:
        """All-ones token ids (batch_size, seq_len), int64, on the model's device."""
        device = next(self.parameters()).device
        return torch.ones((batch_size, self.seq_len), dtype=torch.int64, device=device)


class TextCNN(TokenModel):
    """Kim (2014), "Convolutional Neural Networks for Sentence Classification" (EMNLP), CNN-rand form.

    Embedding (``embed_dim``, default 128; Kim's 300 are word2vec's size) -> for each filter width 3, 4, 5:
    ``nn.Conv1d`` with 100 feature maps, ``nn.ReLU``, max-over-time pooling -> concatenation (300)
    -> dropout 0.5 -> Linear to ``num_classes``. ``width`` scales the embedding and the feature maps.
    Inputs shorter than the widest filter are right-padded with ``<pad>``. Word vectors start uniform in
    [-0.25, 0.25], as Kim's CNN-rand initialises them (PyTorch's N(0, 1) default gives logits so large that
    training stalls near chance for several epochs; measured on SST-2). Kim's max-norm constraint
    (3 on the classifier's rows) is a training-loop matter and not applied here.
    Parameters at vocab V, width 1: 128 V + 12 * 128 * 100 + 300 + 301 * num_classes.
    """

    def __init__(self, num_classes: int = 2, width: float = 1.0, vocab_size: int = 20000, seq_len: int = 64,
                 embed_dim: int = 128, filter_widths: tuple[int, ...] = (3, 4, 5), feature_maps: int = 100,
                 dropout: float = 0.5):
        super().__init__()
        width = check_width(width)
        self._sizes(vocab_size, seq_len)
        embed, maps = scaled(embed_dim, width), scaled(feature_maps, width)
        self.filter_widths = tuple(filter_widths)
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=0)
        with torch.no_grad():
            self.embedding.weight.uniform_(-0.25, 0.25)
            self.embedding.weight[0] = 0.0  # <pad>
        self.convs = nn.ModuleList(nn.Conv1d(embed, maps, k) for k in self.filter_widths)
        self.relus = nn.ModuleList(nn.ReLU() for _ in self.filter_widths)
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(maps * len(self.filter_widths), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = token_ids(x)
        short = max(self.filter_widths) - x.shape[1]
        if short > 0:
            x = nn.functional.pad(x, (0, short), value=0)
        h = self.embedding(x).transpose(1, 2)  # (B, embed, L)
        # pooled maps concatenated as channels (B, 3 maps, 1), flattened after: the form torch-pruning traces
        pooled = torch.cat([self.pool(relu(conv(h))) for conv, relu in zip(self.convs, self.relus)], dim=1)
        return self.fc(self.dropout(pooled.flatten(1)))


class TransformerEncoderClassifier(TokenModel):
    """A small transformer encoder (Vaswani et al. 2017, pre-LN as in GPT-2/"On Layer Normalization in the
    Transformer Architecture", Xiong et al. 2020) for sentence classification, in the spirit of BERT's
    (Devlin et al. 2019) fine-tuning head but with mean pooling instead of a [CLS] token.

    Token embedding + learned positional embedding (``seq_len`` positions), ``layers`` (2) blocks of
    ``heads`` (4) heads at ``d_model`` (64) with an MLP of 4 d_model and ReLU, dropout 0.1; a final
    LayerNorm, the mean over the non-``<pad>`` positions, Linear to ``num_classes``. Padding positions
    are masked out of attention as keys. ``width`` scales d_model (a multiple of ``heads``) and the MLP.
    Projections are separate q/k/v/out Linear layers (see :mod:`._transformer`).
    """

    def __init__(self, num_classes: int = 2, width: float = 1.0, vocab_size: int = 20000, seq_len: int = 64,
                 d_model: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        width = check_width(width)
        self._sizes(vocab_size, seq_len)
        d = heads * scaled(d_model // heads, width)
        self.token_embedding = nn.Embedding(vocab_size, d, padding_idx=0)
        self.position_embedding = nn.Embedding(seq_len, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, 4 * d, dropout, causal=False) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = token_ids(x)
        keep = x != 0
        keep = keep | ~keep.any(dim=1, keepdim=True)  # an all-<pad> row attends to (and averages) everything
        h = self.drop(self.token_embedding(x) + self.position_embedding(positions(x.shape[1], self.seq_len,
                                                                                  x.device)))
        for block in self.blocks:
            h = block(h, keep)
        h = self.ln(h)
        weights = keep.unsqueeze(-1).to(h.dtype)
        return self.fc((h * weights).sum(1) / weights.sum(1))
