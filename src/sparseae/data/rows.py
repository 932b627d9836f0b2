"""What each row of a data set is, beyond its numbers: a text, or a token in a document.

The report reads this to show what a feature means: the texts of embeddings, or
the context of a language-model token with every token shaded. Labels stay on
`sparseae.data.Dataset` (``test_labels``, ``label_names``); column names of
tabular data are ``Dataset.columns``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparseae.errors import SparseAEError


@dataclass(frozen=True)
class Documents:
    """The token sequences that activation rows came from: every token of each document,
    whether or not it was kept as a row (special tokens and padding are not rows)."""

    token_ids: Tensor
    """``(T,)`` int64: all documents' token ids, one document after another."""
    offsets: Tensor
    """``(D + 1,)`` int64: document ``i`` is ``token_ids[offsets[i]:offsets[i + 1]]``."""
    vocab: dict[int, str]
    """How each token id present is shown (the tokenizer's text of that one token)."""
    tokenizer: str
    """The tokenizer's name or local folder, as the activations were collected with."""
    model: str | None = None
    """The language model's name or local folder (for its unembedding), where known."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> Tensor:
        """The number of tokens of each document, ``(D,)``."""
        return self.offsets[1:] - self.offsets[:-1]

    def tokens(self, doc: int) -> Tensor:
        """The token ids of document ``doc``, ``(length,)``."""
        return self.token_ids[self.offsets[doc] : self.offsets[doc + 1]]

    def text(self, token_id: int) -> str:
        """How ``token_id`` is shown: its own text (a leading space kept), or ``<id>`` when not in ``vocab``."""
        return self.vocab.get(int(token_id), f"<{int(token_id)}>")

    def context(self, doc: int, position: int, before: int = 16, after: int = 4) -> tuple[list[int], int]:
        """Token ids of the window around ``position`` in ``doc``, and the index of that token in it."""
        ids = self.tokens(doc)
        start = max(0, position - before)
        return ids[start : position + after + 1].tolist(), position - start


@dataclass(frozen=True)
class TokenRows:
    """For each row of activations: its document and its position in that document's tokens."""

    doc_ids: Tensor
    """``(N,)`` int64, indices into ``documents``."""
    positions: Tensor
    """``(N,)`` int64, positions in the document's token sequence (``Documents.tokens``)."""
    documents: Documents

    def __len__(self) -> int:
        return len(self.doc_ids)

    def token_ids(self) -> Tensor:
        """The token id of every row, ``(N,)``."""
        return self.documents.token_ids[self.documents.offsets[self.doc_ids] + self.positions]

    def select(self, rows: Tensor | slice) -> TokenRows:
        """The rows ``rows`` (a slice, or a tensor of row indices), of the same documents."""
        return TokenRows(self.doc_ids[rows], self.positions[rows], self.documents)


@dataclass(frozen=True)
class RowInfo:
    """What each row of one split is; every field has one entry per row, or is None."""

    texts: tuple[str, ...] | None = None
    """The text each row embeds (embeddings with a text column or a sidecar file)."""
    tokens: TokenRows | None = None
    """The document and position of each row (language-model activations)."""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Other per-row strings worth showing (e.g. an id column), by name."""

    def __post_init__(self) -> None:
        lengths = {name: len(v) for name, v in (("texts", self.texts), ("tokens", self.tokens)) if v is not None}
        lengths.update({f"extra[{k!r}]": len(v) for k, v in self.extra.items()})
        if len(set(lengths.values())) > 1:
            raise SparseAEError(
                "RowInfo",
                expected="one entry per row in every field",
                got=", ".join(f"{n} {name}" for name, n in lengths.items()),
                fix="Give each field the rows of one split.",
            )

    def select(self, rows: Tensor | slice) -> RowInfo:
        """The entries of ``rows`` (a slice, or a tensor of row indices)."""
        index = torch.arange(len(self))[rows].tolist() if self.texts is not None or self.extra else None

        def pick(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
            return None if values is None else tuple(values[i] for i in index)

        tokens = None if self.tokens is None else self.tokens.select(rows)
        return RowInfo(pick(self.texts), tokens, {k: pick(v) for k, v in self.extra.items()})

    def __len__(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        if self.tokens is not None:
            return len(self.tokens)
        return len(next(iter(self.extra.values()), ()))
