"""Which token each row of language-model activations is: recorded while the rows are collected, kept beside a cache.

A *document* is one sequence fed to the model: BOS (when the tokenizer has one) and at most
``context_length - 1`` tokens of one text; a longer text is cut into several documents
(see `sparseae.data.activations`). An encoder's sequence is framed as it was trained,
``[CLS]``, at most ``context_length - 2`` tokens, ``[SEP]``. A row's position indexes its
document's sequence, so with a BOS (or [CLS]) token position 0 is that token (never a row
under ``exclude_bos``, nor is [SEP]) and the first token of the text is position 1. Every
token of a document is kept, whether or not it gave a row; padding is not part of any document.

On disk, beside a shard cache's ``manifest.json``::

    tokens.safetensors  doc_ids (N,) int32, positions (N,) int32: the document and position of each row;
                        token_ids (T,) int32: every document's tokens, one after another;
                        offsets (D + 1,) int64: document i is token_ids[offsets[i]:offsets[i + 1]]
    tokens.json         {"format": "sparseae-tokens", "version": 1, "tokenizer": ..., "model": ...,
                         "document": "sequence", "rows": N, "documents": D, "vocab": {"<id>": "<text>", ...},
                         "causal": true | false}  (whether the model has an unembedding; absent in older caches)

``vocab`` holds the text of each token id present (see `token_texts`). A cache written
before token ids were recorded has neither file, and loads without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseae.data.rows import Documents, TokenRows
from sparseae.errors import SparseAEError
from sparseae.io import atomic_write, read_json, write_json

TOKENS_FILE, INDEX_FILE = "tokens.safetensors", "tokens.json"
FORMAT, VERSION = "sparseae-tokens", 1


class TokenLog:
    """The documents and rows of a collection, batch by batch (`sparseae.data.activations.iter_activations`)."""

    def __init__(self) -> None:
        self._docs: list[Tensor] = []  # the token ids of each document
        self._doc_ids: list[Tensor] = []
        self._positions: list[Tensor] = []

    def add(self, ids: Tensor, mask: Tensor, keep: Tensor, n: int) -> None:
        """One batch: ``ids`` and ``mask`` ``(B, T)``; rows came from the first ``n`` positions of ``keep``
        ``(B, T)`` in row-major order (the order of ``out[keep]``)."""
        b, t = torch.nonzero(keep.cpu(), as_tuple=True)  # (R,) each, row-major
        b, t = b[:n], t[:n]
        used = int(b[-1]) + 1 if n else 0  # sequences after the last row's (the text ran past max_tokens) are dropped
        lengths = mask.sum(1)
        # int32 while collecting (half the memory of a long cache's log); token_rows gives int64
        self._doc_ids.append((b + len(self._docs)).int())
        self._positions.append(t.int())
        self._docs.extend(ids[row, : int(lengths[row])].int() for row in range(used))

    def token_rows(self, tokenizer: Any, name: str, dtype: torch.dtype = torch.long) -> TokenRows:
        """The rows so far, their documents shown with ``tokenizer``'s texts; ``name``: the model (and tokenizer) loaded.

        ``dtype`` of the ids and positions: int64 as `TokenRows` states, or int32 to write them out with less memory.
        """

        def cat(parts: list[Tensor]) -> Tensor:
            return torch.cat(parts).to(dtype) if parts else torch.empty(0, dtype=dtype)

        token_ids = cat(self._docs)
        offsets = torch.zeros(len(self._docs) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor([len(d) for d in self._docs], dtype=torch.long).cumsum(0)
        vocab = token_texts(tokenizer, token_ids.unique().tolist())
        documents = Documents(token_ids, offsets, vocab, tokenizer=name, model=name)
        return TokenRows(cat(self._doc_ids), cat(self._positions), documents)


def token_texts(tokenizer: Any, ids: list[int]) -> dict[int, str]:
    """The text of each token id of ``ids`` alone: ``tokenizer.decode([id])``, so GPT-2's ``Ġthe`` is `` the``
    with its leading space as a real space, and a document's texts joined give its text back.

    Two repairs: a SentencePiece piece (``▁the``) keeps the space that decoding a lone piece drops, and a
    token that is part of a multi-byte character (decoded as ``\\ufffd``) is shown as its raw piece.
    """
    pieces = tokenizer.convert_ids_to_tokens(ids)
    texts = {}
    for token_id, piece in zip(ids, pieces, strict=True):
        text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        piece = "" if piece is None else str(piece)
        if "\ufffd" in text and piece and "\ufffd" not in piece:
            text = piece
        elif piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        texts[int(token_id)] = text
    return texts


def write_tokens(directory: Path, rows: TokenRows, *, causal: bool | None = None) -> None:
    """Write ``rows`` beside a shard cache in ``directory`` (its two files; see the module's docstring);
    ``causal``: whether the model has an unembedding (kept in ``tokens.json``, when known)."""
    from safetensors.torch import save

    docs = rows.documents
    tensors = {
        "doc_ids": rows.doc_ids.int().contiguous(),
        "positions": rows.positions.int().contiguous(),
        "token_ids": docs.token_ids.int().contiguous(),
        "offsets": docs.offsets.long().contiguous(),
    }
    atomic_write(directory / TOKENS_FILE, save(tensors))
    index = {"format": FORMAT, "version": VERSION, "tokenizer": docs.tokenizer, "model": docs.model, "document": "sequence",
             "rows": len(rows), "documents": len(docs), "vocab": {str(k): v for k, v in sorted(docs.vocab.items())}}  # fmt: skip
    if causal is not None:
        index["causal"] = causal
    write_json(directory / INDEX_FILE, index)


def read_tokens(directory: Path, rows: int) -> TokenRows | None:
    """The token rows kept beside the cache ``directory`` of ``rows`` rows; None for a cache without them."""
    if not (directory / INDEX_FILE).is_file():
        return None
    from safetensors.torch import load_file

    index = read_json(directory / INDEX_FILE)
    fix = "Write the cache again (sparseae cache-activations), or delete tokens.json and tokens.safetensors to load it without."
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("vocab"), dict):
        raise SparseAEError(str(directory / INDEX_FILE), expected=f"a {FORMAT} index", got="another JSON file", fix=fix)
    try:
        tensors = {k: v.long() for k, v in load_file(str(directory / TOKENS_FILE)).items()}
        doc_ids, positions, token_ids, offsets = (tensors[k] for k in ("doc_ids", "positions", "token_ids", "offsets"))
    except (OSError, KeyError, ValueError, RuntimeError) as e:  # missing, or not the tensors written
        raise SparseAEError(str(directory / TOKENS_FILE), expected="the token ids of the cache's rows",
                            got=f"an unreadable file ({type(e).__name__}: {e})", fix=fix) from None  # fmt: skip
    documents = len(offsets) - 1
    fits = len(doc_ids) == len(positions) == rows and documents >= 0 and int(offsets[-1]) == len(token_ids)
    if fits and rows:
        lengths = offsets[1:] - offsets[:-1]
        fits = bool((doc_ids >= 0).all() and (doc_ids < documents).all() and (positions >= 0).all())
        fits = fits and bool((positions < lengths[doc_ids.clamp(0, max(documents - 1, 0))]).all())
    if not fits:
        raise SparseAEError(
            str(directory / TOKENS_FILE),
            expected=f"a document and position for each of the {rows} rows",
            got=f"{len(doc_ids)} rows over {documents} documents of {len(token_ids)} tokens",
            fix=fix,
        )
    vocab = {int(k): str(v) for k, v in index["vocab"].items()}
    docs = Documents(token_ids, offsets, vocab, tokenizer=str(index.get("tokenizer")), model=index.get("model"))
    return TokenRows(doc_ids, positions, docs)
