"""What a feature means, by the kind of rows: pictures, texts, token contexts, column loadings, logit tables.

Every function here returns plain JSON-ready values (lists, dicts, strings, floats) for the
report's data files; none of them writes HTML, and the browser shows every string with
``textContent`` only.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from sparseae.data.rows import Documents, RowInfo, TokenRows
from sparseae.errors import SparseAEError
from sparseae.models import Autoencoder
from sparseae.pictures.features import feature_tiles, image_shape
from sparseae.pictures.images import encode_png, image_grid
from sparseae.report.scan import values_at

log = logging.getLogger(__name__)
BEFORE, AFTER = 16, 4
"""Tokens shown before and after the token a feature fires on."""
KINDS = ("images", "tokens", "texts", "tables", "arrays")
TEXT_CHARS = 600
"""Longer texts are cut to this many characters (with an ellipsis) in the report."""
WORD = re.compile(r"\w+")


def png_uri(image: Tensor, scale: int = 1) -> str:
    """A PNG data URI of one image ``(C, H, W)`` with values in [0, 1]."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image_grid([image[None]], pad=0, scale=scale))).decode()


def row_kind(sample_shape: tuple[int, ...], rows: RowInfo | None, columns: tuple[str, ...] | None) -> str:
    """Which of `KINDS` the held-out rows are, from what the data carries (first match in that order)."""
    if image_shape(sample_shape) and (rows is None or (rows.texts is None and rows.tokens is None)) and not columns:
        return "images"
    if rows is not None and rows.tokens is not None:
        return "tokens"
    if rows is not None and rows.texts is not None:
        return "texts"
    if columns:
        return "tables"
    return "arrays"


def describe_row(
    x: Any, i: int, kind: str, rows: RowInfo | None, label: str | None, columns: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """What the report shows of held-out row ``i`` beside its activation (the token context aside); a table's
    first values come with their column names."""
    out: dict[str, Any] = {"label": label}
    if kind == "images":
        shape = image_shape(tuple(x.shape[1:]))
        out["img"] = png_uri(torch.as_tensor(x[i : i + 1])[0].reshape(shape).clamp(0, 1))
    elif kind == "texts":
        text = rows.texts[i]
        out["text"] = text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "…"
    elif kind == "arrays" or kind == "tables":
        values = [round(v, 4) for v in torch.as_tensor(x[i : i + 1])[0].flatten()[:8].tolist()]
        out["values"] = [f"{c} {v}" for c, v in zip(columns, values, strict=False)] if kind == "tables" else values
    for name, values in rows.extra.items() if rows is not None else ():
        out.setdefault("extra", {})[name] = values[i]
    return out


@torch.no_grad()
def directions(model: Autoencoder, batch: int = 1024) -> Iterator[tuple[int, Tensor]]:
    """Each latent's decoder direction in the raw inputs' units, ``batch`` latents at a time: (first latent, ``(b, d_in)``).

    The decoder's output for the latent alone at 1 minus its output for the zero code, with
    the model's (linear) preprocessing undone, so that loadings read in the data's own columns.
    """
    device = next(model.parameters()).device
    zero = torch.zeros(1, *model.input_shape, device=device)
    base = model.preprocess.inverse(model.decode(torch.zeros(1, model.n_latents, device=device)), zero)
    for start in range(0, model.n_latents, batch):
        eye = torch.zeros(min(batch, model.n_latents - start), model.n_latents, device=device)
        eye[:, start : start + len(eye)] = torch.eye(len(eye), device=device)
        out = model.preprocess.inverse(model.decode(eye), zero.expand(len(eye), *model.input_shape)) - base
        yield start, out.reshape(len(eye), -1).float().cpu()


def loadings(model: Autoencoder, columns: tuple[str, ...], k: int = 8) -> list[dict[str, list]]:
    """Per latent: its decoder atom's ``k`` largest positive and negative loadings, ``[column name, value]``."""
    out = []
    for _, atoms in directions(model):  # (b, d)
        k_ = min(k, atoms.shape[1])
        up, down = atoms.topk(k_, dim=1), atoms.topk(k_, dim=1, largest=False)
        for uv, ui, dv, di in zip(up.values, up.indices, down.values, down.indices, strict=True):
            out.append({
                "pos": [[columns[i], round(v, 4)] for v, i in zip(uv.tolist(), ui.tolist(), strict=True) if v > 0],
                "neg": [[columns[i], round(v, 4)] for v, i in zip(dv.tolist(), di.tolist(), strict=True) if v < 0],
            })  # fmt: skip
    return out


def unembedding(documents: Documents | None, d_in: int) -> tuple[Tensor, Any] | None:
    """The language model's unembedding ``(vocab, d_model)`` and tokenizer, where the documents name a model
    that loads here (locally) and whose width is the SAE's input width; else None (logged why)."""
    if documents is None or not documents.model:
        return None
    try:
        from sparseae.data.activations import load_lm

        lm, tokenizer = load_lm(documents.model, device="cpu")
    except (SparseAEError, ImportError) as e:
        log.warning("no logit tables: %s", e)
        return None
    head = lm.get_output_embeddings()
    if head is None:
        log.warning("no logit tables: %s is an encoder (%s), with no unembedding", documents.model, type(lm).__name__)
        return None
    if head.weight.shape[1] != d_in:
        log.warning("no logit tables: %s's unembedding is %d wide, the SAE's input %d", documents.model,
                    head.weight.shape[1], d_in)  # fmt: skip
        return None
    return head.weight.detach().float(), tokenizer


@torch.no_grad()
def logit_tables(model: Autoencoder, w_u: Tensor, tokenizer: Any, k: int = 10) -> list[dict[str, list]]:
    """Per latent: the ``k`` tokens its decoder direction promotes and suppresses most (``W_U @ atom``), ``[token, value]``."""
    names: dict[int, str] = {}

    def name(i: int) -> str:
        if i not in names:
            names[i] = tokenizer.decode([i])
        return names[i]

    out = []
    for _, atoms in directions(model, batch=512):
        logits = atoms @ w_u.T  # (b, vocab)
        up, down = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        for uv, ui, dv, di in zip(up.values, up.indices, down.values, down.indices, strict=True):
            out.append({
                "up": [[name(i), round(v, 3)] for v, i in zip(uv.tolist(), ui.tolist(), strict=True)],
                "down": [[name(i), round(v, 3)] for v, i in zip(dv.tolist(), di.tolist(), strict=True)],
            })  # fmt: skip
    return out


def row_of_token(tokens: TokenRows) -> Tensor:
    """For every token of the documents, the held-out row it is (-1 where it is no row), ``(T,)``."""
    out = torch.full((len(tokens.documents.token_ids),), -1, dtype=torch.int64)
    out[tokens.documents.offsets[tokens.doc_ids] + tokens.positions] = torch.arange(len(tokens))
    return out


def contexts(model: Autoencoder, x: Any, tokens: TokenRows, examples: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """For each (latent, row): the tokens around that row's token, each ``[text, activation or None]``, and ``at``,
    the index of the row's own token. Tokens that are not held-out rows (special tokens) have no activation."""
    if not examples:
        return []
    docs = tokens.documents
    latents, rows = (torch.tensor(v, dtype=torch.int64) for v in zip(*examples, strict=True))
    doc = tokens.doc_ids[rows]
    start, end = docs.offsets[doc], docs.offsets[doc + 1]
    here = start + tokens.positions[rows]
    window = here[:, None] + torch.arange(-BEFORE, AFTER + 1)  # (E, W) global token indices
    inside = (window >= start[:, None]) & (window < end[:, None])
    row_at = torch.where(inside, row_of_token(tokens)[window.clamp(0, len(docs.token_ids) - 1)], -1)
    known = row_at >= 0
    values = torch.zeros(row_at.shape)
    values[known] = values_at(model, x, row_at[known], latents[:, None].expand_as(row_at)[known])
    ids = docs.token_ids[window.clamp(0, len(docs.token_ids) - 1)]
    out = []
    for e in range(len(examples)):
        cells = inside[e].nonzero().flatten().tolist()
        ctx = [[docs.text(ids[e, c]), round(float(values[e, c]), 4) if known[e, c] else None] for c in cells]
        out.append({"ctx": ctx, "at": cells.index(BEFORE)})
    return out


def token_view(tokens: TokenRows, n_docs: int = 3, max_tokens: int = 96) -> list[list[list]]:
    """A few held-out documents as ``[text, row or -1]`` per token (the first ``n_docs`` with held-out rows)."""
    docs, row_of = tokens.documents, row_of_token(tokens)
    out = []
    for d in tokens.doc_ids.unique().tolist()[:n_docs]:
        begin = int(docs.offsets[d])
        ids = docs.tokens(d)[:max_tokens].tolist()
        out.append([[docs.text(t), int(row_of[begin + p])] for p, t in enumerate(ids)])
    return out


def words(text: str) -> set[str]:
    """The words of ``text`` for the feature search: lower-case runs of letters and digits."""
    return {w.lower() for w in WORD.findall(text)}


def tiles(model: Autoencoder) -> list[str] | None:
    """Each latent's picture as a PNG data URI, where inputs are images."""
    images = feature_tiles(model)
    return None if images is None else [png_uri(t) for t in images]
