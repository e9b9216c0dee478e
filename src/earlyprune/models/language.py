"""Language models on token ids (B, seq) int64 -> next-token logits (B, seq, vocab_size).

The loss is ``F.cross_entropy(out.flatten(0, 1), targets.flatten())``. ``num_classes``, when given, must
equal ``vocab_size`` (either one sizes the model). Both models carry the token-model attributes of
:mod:`.text` (``input_shape = (seq_len,)``, ``input_dtype``, ``vocab_size``, ``seq_len``,
``example_input``).
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import check_width, resolve_vocab, scaled, token_ids
from ._transformer import Block, positions
from .text import TokenModel

_SHAKESPEARE_VOCAB = 65


class LSTMLanguageModel(TokenModel):
    """The LSTM language model of PyTorch's ``word_language_model`` example (after Zaremba, Sutskever,
    Vinyals 2014, "Recurrent Neural Network Regularization"), the model EarlyCroP's (Rachwan et al. 2022)
    NLP part is described as using (not checked against that repository, of which no copy was at hand):
    Embedding(vocab, ``embed_dim`` 200) -> dropout -> ``layers`` (2) LSTM layers of ``hidden`` (200) units
    with dropout between them -> dropout -> Linear decoder to the vocabulary; dropout 0.2.

    ``tie_weights`` shares the decoder's weight with the embedding (Press and Wolf 2017; Inan et al.
    2017); it needs ``embed_dim == hidden``. ``width`` scales the embedding and the hidden size. The LSTM
    runs batch-first and starts from a zero state on every call (windows are independent examples).
    Parameters at width 1, vocab V, untied: 200 V + 2 * 4 * (200 * 200 * 2 + 2 * 200) + 201 V.
    """

    def __init__(self, num_classes: int | None = None, width: float = 1.0, vocab_size: int | None = None,
                 seq_len: int = 128, embed_dim: int = 200, hidden: int = 200, layers: int = 2,
                 dropout: float = 0.2, tie_weights: bool = False):
        super().__init__()
        width = check_width(width)
        vocab = resolve_vocab(vocab_size, num_classes, _SHAKESPEARE_VOCAB)
        self._sizes(vocab, seq_len)
        embed, hid = scaled(embed_dim, width), scaled(hidden, width)
        if tie_weights and embed != hid:
            raise ValueError(f"tie_weights needs embed_dim == hidden, got {embed} and {hid}")
        self.drop = nn.Dropout(dropout)
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hid, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                            batch_first=True)
        self.decoder = nn.Linear(hid, vocab)
        self.tie_weights = bool(tie_weights)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(self.drop(self.embedding(token_ids(x))))
        return self.decoder(self.drop(h))


class GPTMini(TokenModel):
    """A small GPT-style causal decoder (Radford et al. 2018/2019, "Language Models are Unsupervised
    Multitask Learners"; sizes of a CPU-sized nanoGPT ``shakespeare_char`` run): token + learned
    positional embedding over ``seq_len`` (128) positions, ``layers`` (2) pre-LN blocks of ``heads`` (4)
    causal heads at ``d_model`` (64) with an MLP of 4 d_model and ReLU (GPT-2: GELU), dropout 0.1, a final
    LayerNorm and a Linear head to the vocabulary (not tied). ``width`` scales d_model and the MLP.
    Initialised as GPT-2 (scheme ``"gpt2"``: N(0, 0.02)). Projections are separate q/k/v/out Linear layers.
    """

    def __init__(self, num_classes: int | None = None, width: float = 1.0, vocab_size: int | None = None,
                 seq_len: int = 128, d_model: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        width = check_width(width)
        vocab = resolve_vocab(vocab_size, num_classes, _SHAKESPEARE_VOCAB)
        self._sizes(vocab, seq_len)
        d = heads * scaled(d_model // heads, width)
        self.token_embedding = nn.Embedding(vocab, d)
        self.position_embedding = nn.Embedding(seq_len, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, 4 * d, dropout, causal=True) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: Tensor) -> Tensor:
        x = token_ids(x)
        h = self.drop(self.token_embedding(x) + self.position_embedding(positions(x.shape[1], self.seq_len,
                                                                                  x.device)))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))
