"""Activations of a Hugging Face language model as training data, and the CE loss an SAE recovers.

The data flow: documents (a ``.txt`` file, a directory of them, or a Hugging Face data
set) -> tokens, cut into sequences of at most ``context_length`` -> batches of sequences,
padded on the right -> a forward pass with a hook on one module -> its output at the
real tokens, one row per token ``(n_tokens, d_model)``. Several modules can be hooked at
once (`iter_activations_per_module`): one forward pass gives the rows of each, for the same
tokens. The model is a causal language model or an encoder (BERT; see `sparseae.data.lm_models`).

Choices, made once here:

* **BOS.** Every sequence starts with the tokenizer's BOS token when it has one (GPT-2's
  ``<|endoftext|>`` included, though GPT-2's tokenizer does not add it by itself), as
  TransformerLens and SAELens do: models are trained on text that follows a document
  boundary, and the first position of a sequence without one behaves like no other.
  The BOS position's activation is an outlier (an "attention sink" with a huge norm), so
  ``exclude_bos`` (the default) leaves it out of the training rows and, in
  `ce_loss_recovered`, unreplaced. A tokenizer without a BOS token gets nothing
  prepended, and then ``exclude_bos`` has nothing to exclude.
* **[CLS] and [SEP].** An encoder's sequences are framed as it was trained, ``[CLS] ...
  [SEP]`` (every cut of a long document too), and ``exclude_bos`` leaves both out: the
  rows are the real word pieces, as in ``benchmarks/real/collect.py``.
* **Padding.** A batch is padded on the right, to its longest sequence. Right padding
  keeps every real token at the position it would have alone (GPT-2 and BERT number
  positions ``0..T-1`` whatever the mask says), and the attention mask (with causal
  attention, the order too) keeps pads out of the real tokens' view, so the rows do not
  depend on the batch they were computed in (up to float rounding). Pads are dropped
  through the attention mask.
* **Early stop.** A hook raises a private exception once every hooked module has given its
  output, so the layers after the deepest one, and the unembedding (often the largest matrix of a small
  model), are never run; see ``benchmarks/lm_activations.py`` for what that saves.
* ``torch.no_grad`` rather than ``torch.inference_mode``: inference tensors cannot be
  saved for backward, and these rows are the input of an SAE being trained.
* **What each row is.** A `sparseae.data.tokens.TokenLog` records the document (one
  sequence fed to the model) and position of every row, and every token of those
  sequences; `cache_activations` keeps it beside the shards, and ``--data lm`` keeps it
  for its test rows (see `sparseae.data.tokens`).

``transformers`` (and ``datasets``, for ``hf:`` text) are imported where used, so that
``import sparseae`` stays fast; both come with ``pip install 'sparseae[lm]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseae._config import to_dict
from sparseae.data.config import ActivationConfig
from sparseae.data.fan_out import fan_out
from sparseae.data.lm_models import (
    INSTALL_FIX,
    Framing,
    find_module,
    is_causal_lm,
    is_many,
    load_lm,
    module_names,
    resolve_modules,
)
from sparseae.data.rows import TokenRows
from sparseae.data.stream import Stream
from sparseae.data.tokens import TokenLog, write_tokens
from sparseae.errors import SparseAEError, check

__all__ = [
    "ActivationConfig",
    "ActivationStream",
    "cache_activations",
    "ce_loss_recovered",
    "collect",
    "collect_per_module",
    "find_module",
    "is_causal_lm",
    "iter_activations",
    "iter_activations_per_module",
    "load_lm",
    "module_names",
    "read_texts",
    "resolve_modules",
]

log = logging.getLogger(__name__)

_DOCS_PER_CALL = 64
"""Documents handed to the tokenizer at once (a fast tokenizer works on a list in parallel)."""


def _device_of(module: Any, default: torch.device) -> torch.device:
    if isinstance(module, nn.Module):
        for p in itertools.chain(module.parameters(), module.buffers()):
            return p.device
    return default


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


# --- text -> sequences -> padded batches --------------------------------------------------------------------------------


def read_texts(text: str, *, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """The documents of ``text`` (see `ActivationConfig.text`), one string each, lazily."""
    if text.startswith("hf:"):
        yield from _hf_texts(text[3:], text_column, split)
        return
    path = Path(text)
    if path.is_file():
        yield from _paragraphs(path)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise SparseAEError(
                str(path), expected="a directory holding .txt files", got="none", fix="Point text at the documents."
            )
        for file in files:
            yield from _paragraphs(file)
    else:
        raise SparseAEError(
            "text",
            expected="a .txt file, a directory of .txt files, or hf:<dataset>[:<config>]",
            got=f"{text!r} (no such file or directory)",
            fix="Check the path, or prefix a Hugging Face data set with hf:.",
        )


def _paragraphs(path: Path) -> Iterator[str]:
    """The blank-line-separated documents of a text file, read line by line (the file may exceed memory)."""
    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
    if lines:
        yield "".join(lines).rstrip("\n")


def _hf_texts(spec: str, column: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise SparseAEError(
            "datasets", expected="the datasets package (for hf: text)", got="not installed", fix=INSTALL_FIX
        ) from None
    name, _, config = spec.partition(":")
    # Streaming reads the rows as they are needed: a million tokens are a sliver of most corpora.
    data = datasets.load_dataset(name, config or None, split=split, streaming=True)
    for row in data:
        if column not in row:
            raise SparseAEError(
                "text_column", expected=f"a column of {name}: {', '.join(row)}", got=repr(column), fix="Set text_column."
            )
        yield row[column]


def _sequences(tokenizer: Any, texts: Iterable[str], context_length: int, framing: Framing) -> Iterator[list[int]]:
    """Token ids of each document, cut into sequences of at most ``context_length``, each framed by ``framing``."""
    # The special tokens are added here rather than by the tokenizer, so that every cut of a
    # long document is framed too, and tokenizers that add them and those that don't agree.
    step = context_length - len(framing.lead) - len(framing.tail)
    docs = iter(texts)
    while chunk := [t for t in itertools.islice(docs, _DOCS_PER_CALL) if t]:
        # verbose=False: long documents are cut below, so the "longer than the model's maximum" warning is noise.
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            for i in range(0, len(ids), step):
                yield framing.frame(ids[i : i + step])


def _batches(
    tokenizer: Any, texts: Iterable[str], context_length: int, batch_size: int, framing: Framing
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(input_ids, attention_mask)``, both ``(B, T)``, padded on the right to the batch's longest sequence."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs = _sequences(tokenizer, texts, context_length, framing)
    while batch := list(itertools.islice(seqs, batch_size)):
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        yield ids, mask


def _keep(mask: Tensor, framing: Framing, exclude_special: bool) -> Tensor:
    """Positions that give a row: real tokens, less the framing ones (BOS; [CLS] and [SEP]) when asked. Bool ``(B, T)``."""
    keep = mask.bool()  # a new tensor: mask is integer
    if exclude_special:
        keep[:, : len(framing.lead)] = False
        if framing.tail:  # the last real token of each sequence (right padding)
            keep[torch.arange(len(mask)), mask.sum(1) - 1] = False
    return keep


def _check_framing(framing: Framing, context_length: int) -> None:
    n = len(framing.lead) + len(framing.tail)
    if context_length <= n:
        raise SparseAEError(
            "context_length",
            expected=f"more than {n} (the special tokens around each sequence) so that a sequence holds a token",
            got=context_length,
            fix=f"Set context_length to at least {n + 1}.",
        )


def _check_sizes(context_length: int, batch_size: int) -> None:
    check(
        context_length >= 2, "context_length", expected="an integer >= 2 (BOS and a token)", got=context_length, fix="Raise it."
    )
    check(batch_size >= 1, "batch_size", expected="an integer >= 1", got=batch_size, fix="Raise it.")


def _check_context(model: nn.Module, context_length: int) -> None:
    limit = _max_positions(model)
    if limit is not None and context_length > limit:
        raise SparseAEError(
            "context_length",
            expected=f"at most {limit} (the model's maximum number of positions)",
            got=context_length,
            fix=f"Set context_length to {limit} or less.",
        )


# --- collecting activations ---------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by a hook once every hooked module has given its output, to skip the rest of the forward pass."""


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _per_token(name: str, output: Any, shape: tuple[int, int]) -> Tensor:
    """A hooked module's output ``(B, T, d)`` (or the first item of the tuple it returns), checked."""
    out = output[0] if isinstance(output, tuple) and output else output
    if isinstance(out, Tensor) and out.dim() == 3 and tuple(out.shape[:2]) == shape:
        return out
    what = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}, not a tensor"
    raise SparseAEError(
        f"module {name!r}",
        expected=f"an output of shape (batch, tokens, d) = {shape} + (d,), or a tuple that starts with one",
        got=what + (" (the first item of its tuple)" if isinstance(output, tuple) else ""),
        fix="Hook a module that keeps one vector per token (a block, an MLP, an attention output).",
    )


def iter_activations_per_module(
    model: nn.Module,
    tokenizer: Any,
    modules: str | Sequence[str],
    texts: Iterable[str],
    *,
    context_length: int = 128,
    batch_size: int = 8,
    exclude_bos: bool = True,
    max_tokens: int | None = None,
    stop_early: bool = True,
    tokens: TokenLog | None = None,
) -> Iterator[dict[str, Tensor]]:
    """The outputs of several modules at every real token of ``texts``, from one forward pass per batch.

    ``modules``: names, a comma list or glob patterns (`resolve_modules`). Per batch, a dict from
    module name (in the model's order) to a float32 CPU tensor ``(n_tokens, d)``; row ``i`` of
    every tensor is the same token. Rows come in text order (sequence by sequence, position by
    position); padding never gives a row, nor the special tokens framing each sequence (BOS;
    an encoder's [CLS] and [SEP]) when ``exclude_bos``. Exactly ``max_tokens`` rows in all (fewer
    if the text runs out). The forward pass stops once the last of the modules has run;
    ``stop_early=False`` runs the whole model, for comparison only. ``tokens``, if given,
    records the sequence and position of every row, and every token of those sequences.
    """
    _check_sizes(context_length, batch_size)
    names = resolve_modules(model, modules if isinstance(modules, str) else ",".join(modules))
    _check_context(model, context_length)
    framing = Framing.of(model, tokenizer)
    _check_framing(framing, context_length)
    device = _device_of(model, torch.device("cpu"))
    extra = {"use_cache": False} if is_causal_lm(model) else {}
    captured: dict[str, Tensor] = {}
    current: dict[str, Any] = {}  # the shape (B, T) and the positions kept (B, T) of the batch in the model

    def hook(name: str) -> Any:
        def grab(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in captured:  # a module that runs twice gives its first output
                return
            out = _per_token(name, output, current["shape"])  # (B, T, d)
            captured[name] = out[current["keep"].to(out.device)]  # (n, d): a copy, row-major over keep
            if stop_early and len(captured) == len(names):
                raise _StopForward

        return grab

    modules_by_name = dict(model.named_modules())
    handles = [modules_by_name[name].register_forward_hook(hook(name)) for name in names]
    left = math.inf if max_tokens is None else max_tokens
    try:
        for ids, mask in _batches(tokenizer, texts, context_length, batch_size, framing):
            captured.clear()
            keep = _keep(mask, framing, exclude_bos)  # (B, T)
            current.update(shape=tuple(ids.shape), keep=keep)
            with torch.no_grad():
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra)
                except _StopForward:
                    pass
            missing = [name for name in names if name not in captured]
            if missing:
                raise SparseAEError(
                    f"module {missing[0]!r}",
                    expected="a module that the forward pass runs",
                    got="one that it never called",
                    fix="Hook a module on the path from the tokens to the output (a block, its MLP or attention).",
                )
            n = int(min(left, int(keep.sum())))
            if tokens is not None:
                tokens.add(ids, mask, keep, n)
            left -= n
            if n:
                yield {name: captured[name][:n].float().cpu() for name in names}
            if left <= 0:  # before the next batch is tokenised
                break
    finally:
        for handle in handles:
            handle.remove()


def _only(names: list[str]) -> str:
    if len(names) != 1:
        raise SparseAEError(
            "module",
            expected="one module (one tensor of rows per batch)",
            got=f"{len(names)}: {', '.join(names)}",
            fix="Name one module, or collect several with iter_activations_per_module (cache_activations writes one cache each).",
        )
    return names[0]


def iter_activations(model: nn.Module, tokenizer: Any, module_name: str, texts: Iterable[str], **kwargs: Any) -> Iterator[Tensor]:
    """The output of one module ``module_name`` at every real token of ``texts``, one float32 CPU tensor
    ``(n_tokens, d_model)`` per batch; the keywords and rows are those of `iter_activations_per_module`."""
    name = _only(resolve_modules(model, module_name))
    for rows in iter_activations_per_module(model, tokenizer, [name], texts, **kwargs):
        yield rows[name]


def _collect_per_module(
    config: ActivationConfig, model: nn.Module, tokenizer: Any, max_tokens: int, tokens: TokenLog | None = None
) -> Iterator[dict[str, Tensor]]:
    texts = read_texts(config.text, text_column=config.text_column, split=config.split)
    kwargs = dict(context_length=config.context_length, batch_size=config.batch_size, exclude_bos=config.exclude_bos)
    got = 0
    for rows in iter_activations_per_module(
        model, tokenizer, config.module, texts, max_tokens=max_tokens, tokens=tokens, **kwargs
    ):
        got += len(next(iter(rows.values())))
        yield rows
    if got == 0:
        raise SparseAEError(
            "text", expected="documents with at least one token", got=f"none in {config.text!r}", fix="Check the text."
        )


def _collect(
    config: ActivationConfig, model: nn.Module, tokenizer: Any, max_tokens: int, tokens: TokenLog | None = None
) -> Iterator[Tensor]:
    name = _only(resolve_modules(model, config.module))
    for rows in _collect_per_module(config, model, tokenizer, max_tokens, tokens):
        yield rows[name]


def collect(config: ActivationConfig) -> Iterator[Tensor]:
    """Load ``config.model`` and yield the rows of ``config.module`` (one module) that ``config`` describes.

    Float32 CPU tensors ``(n, d_model)``, one per forward pass, ``config.tokens`` rows in all.
    """
    model, tokenizer = load_lm(config.model, config.device)
    yield from _collect(config, model, tokenizer, config.tokens)


def collect_per_module(config: ActivationConfig) -> Iterator[dict[str, Tensor]]:
    """Load ``config.model`` and yield, per forward pass, the rows of each module ``config.module`` names
    (a name, a comma list or glob patterns): ``{module name: (n, d)}``, the same tokens in every tensor."""
    model, tokenizer = load_lm(config.model, config.device)
    yield from _collect_per_module(config, model, tokenizer, config.tokens)


def cache_activations(config: ActivationConfig, out: str | Path, *, rows_per_shard: int = 65_536, progress: bool = True) -> Path:
    """Collect the rows ``config`` describes into a shard directory ``out`` (new or empty); returns ``out``.

    Read it back with `sparseae.data.shards.ShardReader`. The manifest's metadata
    holds ``config`` (under ``"config"``, loadable with ``from_dict(ActivationConfig, ...)``),
    ``causal`` (whether the model has an unembedding: CE loss recovered and logit tables need
    one), ``model_class``, ``d_model``, ``rows``, ``seconds`` and ``tokens_per_s``. Text with
    fewer tokens than ``config.tokens`` gives a smaller cache, with a warning. The document,
    position and token of every row are written beside the shards (`sparseae.data.tokens`;
    read with ``read_tokens``, or ``load_data`` fills ``Dataset.test_rows``).

    When ``config.module`` is a comma list or a pattern, every module it names is collected
    in the same forward passes into its own cache ``out/<module name>/`` (each as above, its
    ``config.module`` that one name, and ``modules`` the names collected together).
    """
    from sparseae.data.shards import claim

    if not is_many(config.module):
        with claim(out) as directory:  # before the model loads: a second process writing here is refused at once
            model, tokenizer = load_lm(config.model, config.device)
            _write_caches(config, {_only(resolve_modules(model, config.module)): directory}, model, tokenizer,
                          rows_per_shard, progress)  # fmt: skip
            return directory
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SparseAEError(
            str(out), expected="a new or empty directory for the caches", got="a file or a directory that holds files",
            fix="Choose another directory.",
        )  # fmt: skip
    model, tokenizer = load_lm(config.model, config.device)
    names = resolve_modules(model, config.module)
    with contextlib.ExitStack() as stack:
        directories = {name: stack.enter_context(claim(out / name)) for name in names}
        _write_caches(config, directories, model, tokenizer, rows_per_shard, progress)
    return out


def _write_caches(
    config: ActivationConfig, directories: dict[str, Path], model: nn.Module, tokenizer: Any, rows_per_shard: int, progress: bool
) -> None:
    """One forward pass per batch; each module's rows into its directory (held with ``claim``), token files beside each."""
    from tqdm.auto import tqdm

    from sparseae.data.shards import write_into

    names, causal = list(directories), is_causal_lm(model)
    # write_into serialises ``metadata`` when it writes the manifest, after the last
    # row: filling the dicts in as the rows run out records the measured speed in them.
    shared = {"source": "lm-activations", "causal": causal, "model_class": type(model).__name__}
    shared |= {"modules": names} if is_many(config.module) else {}
    metadata = {name: {**shared, "config": to_dict(dataclasses.replace(config, module=name))} for name in names}

    def batches() -> Iterator[dict[str, Tensor]]:
        start, n, widths = time.perf_counter(), 0, {}
        tokens = TokenLog()
        together = dataclasses.replace(config, module=",".join(names))
        with tqdm(total=config.tokens, unit="tok", disable=not progress, desc="activations") as bar:
            for rows in _collect_per_module(together, model, tokenizer, config.tokens, tokens):
                widths = {name: r.shape[1] for name, r in rows.items()}
                n += len(rows[names[0]])
                bar.update(len(rows[names[0]]))
                yield rows
        # before the manifests, which write_into writes last
        token_rows = tokens.token_rows(tokenizer, config.model, dtype=torch.int32)
        seconds = time.perf_counter() - start
        for name, directory in directories.items():
            write_tokens(directory, token_rows, causal=causal)
            metadata[name].update(d_model=widths[name], rows=n, seconds=round(seconds, 3), tokens_per_s=round(n / seconds, 1))
        if n < config.tokens:
            log.warning("%s holds %d tokens, fewer than the %d asked for: the cache is smaller.", config.text, n, config.tokens)

    def writer(name: str) -> Callable[[Iterable[Tensor]], Any]:
        return lambda rows: write_into(rows, directories[name], rows_per_shard=rows_per_shard, metadata=metadata[name])

    if len(names) == 1:
        writer(names[0])(rows[names[0]] for rows in batches())
    else:
        fan_out(batches(), {name: writer(name) for name in names})


# --- training straight from the model -----------------------------------------------------------------------------------

DEFAULT_BUFFER_BATCHES = 64
"""Forward passes whose rows fill the shuffle buffer (64 x 8 sequences x 128 tokens = 65,536 rows by default)."""


class ActivationStream(Stream):
    """The rows ``config`` describes, computed by the language model as training goes, shuffled through a buffer.

    An epoch runs the model over the text from the start: the rows of
    ``buffer_batches`` forward passes fill a buffer, which is shuffled and cut into
    batches, and what is left (fewer rows than a batch) carries over into the next
    buffer, so every row comes once and a batch mixes tokens from hundreds of
    documents. The batches are a function of ``(seed, epoch)``: the rows are
    deterministic (eval mode, a fixed text order; up to the last bit of float rounding,
    which some BLAS libraries vary with memory alignment) and so is the shuffle.

    Every epoch recomputes the activations, as costly as the first; to train for
    several epochs, write them once with `cache_activations` and train from the
    cache. Text with fewer than ``config.tokens`` tokens gives shorter epochs (with a
    warning) than ``len()`` says.

    ``skip`` leaves out the first rows of the text (``skip + config.tokens`` are computed):
    `sparseae.data.load_data` holds them out as the test split.
    """

    def __init__(
        self,
        config: ActivationConfig,
        *,
        buffer_batches: int = DEFAULT_BUFFER_BATCHES,
        skip: int = 0,
        lm: tuple[nn.Module, Any] | None = None,
    ):
        self.config, self.skip, self.buffer_batches = config, skip, buffer_batches
        self.buffer_rows = max(1, buffer_batches) * config.batch_size * config.context_length
        self._lm = lm  # (model, tokenizer), shared between streams of one model
        self._head = torch.empty(0)
        self._head_tokens: TokenRows | None = None

    def _model(self) -> tuple[nn.Module, Any]:
        if self._lm is None:  # loaded on first use, so that building a stream is free
            self._lm = load_lm(self.config.model, self.config.device)
        return self._lm

    def _rows(self, max_tokens: int, tokens: TokenLog | None = None) -> Iterator[Tensor]:
        to_skip = self.skip
        for rows in _collect(self.config, *self._model(), max_tokens + self.skip, tokens):
            if to_skip >= len(rows):
                to_skip -= len(rows)
                continue
            yield rows[to_skip:]
            to_skip = 0

    def __len__(self) -> int:
        return self.config.tokens

    def take(self, n: int) -> ActivationStream:
        config = dataclasses.replace(self.config, tokens=min(n, self.config.tokens))
        return ActivationStream(config, buffer_batches=self.buffer_batches, skip=self.skip, lm=self._lm)

    @property
    def sample_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        """``(d_model,)``, from the first row (which loads the model)."""
        return tuple(self.head(1).shape[1:])

    def head(self, n: int) -> Tensor:
        n = min(n, len(self))
        if len(self._head) < n:
            tokens = TokenLog()
            self._head = torch.cat(list(self._rows(n, tokens)))
            self._head_tokens = tokens.token_rows(self._model()[1], self.config.model).select(slice(self.skip, None))
        return self._head[:n]

    def head_tokens(self, n: int) -> TokenRows:
        """The document and position of each of the first ``n`` rows (as `head` gives them)."""
        rows = self.head(n)
        assert self._head_tokens is not None  # filled by head
        return self._head_tokens.select(slice(0, len(rows)))

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        parts: list[Tensor] = []
        held = total = 0
        for rows in self._rows(len(self)):
            parts.append(rows)
            held += len(rows)
            total += len(rows)
            if held >= self.buffer_rows:
                yield from self._flush(parts, batch_size, g, last=False)
                held = sum(map(len, parts))
        yield from self._flush(parts, batch_size, g, last=True)
        if total < len(self):
            log.warning("%s gave %d tokens, fewer than tokens=%d: the epoch was short.", self.config.text, total, len(self))

    @staticmethod
    def _flush(parts: list[Tensor], batch_size: int, g: torch.Generator, *, last: bool) -> Iterator[Tensor]:
        """Shuffle the buffer ``parts`` and yield its whole batches (and the rest when ``last``); ``parts`` keeps the rest."""
        if not parts:
            return
        buffer = torch.cat(parts)
        buffer = buffer[torch.randperm(len(buffer), generator=g)]
        whole = len(buffer) if last else len(buffer) // batch_size * batch_size
        parts[:] = [] if last else [buffer[whole:]]
        yield from buffer[:whole].split(batch_size)


# --- CE loss recovered --------------------------------------------------------------------------------------------------


def ce_loss_recovered(
    sae: Any,
    model: nn.Module,
    tokenizer: Any,
    module_name: str,
    texts: Iterable[str],
    *,
    context_length: int = 128,
    batch_size: int = 8,
    max_batches: int = 16,
    exclude_bos: bool = True,
) -> dict[str, float]:
    """How much of the language model's next-token loss survives when ``sae`` stands in for ``module_name``.

    Three runs over the same batches (sequences built as for `iter_activations`):

    * ``ce_loss_clean``: the model as it is;
    * ``ce_loss_with_sae``: the module's output replaced by ``sae.reconstruct(output)``
      (``(n, d) -> (n, d)``) at every real token, less BOS when ``exclude_bos`` (as
      SAELens leaves BOS unreplaced for an SAE trained without it);
    * ``ce_loss_zero``: the output replaced by zeros at those same positions,

    and ``ce_loss_recovered = (zero - with_sae) / (zero - clean)``, the "CE loss score"
    of SAELens and SAEBench: 1 when the SAE is as good as the real activations, 0 when
    it is no better than zeros (NaN when zeros do as well as the clean run). Unlike SAELens, which zeroes every position, the zero
    run ablates only the positions the SAE replaces, so that an SAE that outputs zeros
    scores exactly 0; with BOS kept, our zero run hurts a little less, and the score
    is a little lower than SAELens' would be.

    Each loss is the mean next-token cross-entropy (nats) over the predictions whose
    target is a real token, the prediction from BOS included; ``tokens`` is how many.
    At most ``max_batches`` batches of ``batch_size`` sequences are used.
    """
    _check_sizes(context_length, batch_size)
    if not is_causal_lm(model):
        raise SparseAEError(
            "CE loss recovered",
            expected="a causal language model (one that predicts the next token through an unembedding)",
            got=f"{type(model).__name__}, which has no next-token loss (an encoder)",
            fix="It does not apply to encoder models: leave out --ce-loss, and judge the SAE by its FVU and sparsity.",
        )
    module = find_module(model, module_name)
    _check_context(model, context_length)
    framing = Framing.of(model, tokenizer)
    device = _device_of(model, torch.device("cpu"))
    sae_device = _device_of(sae, device)
    # What the hook does on the current run: nothing ("clean"), the SAE ("sae") or zeros
    # ("zero"), at the positions ``keep`` (B, T) of the current batch.
    run: dict[str, Any] = {"mode": "clean", "keep": None}

    def replace(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if run["mode"] == "clean":
            return None
        out = _first(output)  # (B, T, d)
        keep = run["keep"].to(out.device)
        n, d = int(keep.sum()), out.shape[-1]
        if run["mode"] == "sae":
            new = sae.reconstruct(out[keep].float().to(sae_device))  # (n, d)
            if tuple(new.shape) != (n, d):
                raise SparseAEError(
                    "sae.reconstruct",
                    expected=f"rows of shape (n, {d}), the module's output size",
                    got=f"shape {tuple(new.shape)}",
                    fix=f"Use an SAE trained on the output of {module_name}.",
                )
        else:
            new = out.new_zeros((n, d))
        out = out.clone()
        out[keep] = new.to(device=out.device, dtype=out.dtype)
        # Modules that return tuples (attention weights, caches) keep them: only the first element changes.
        return (out, *output[1:]) if isinstance(output, tuple) else out

    was_training = isinstance(sae, nn.Module) and sae.training
    if isinstance(sae, nn.Module):
        sae.eval()
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    count = 0
    handle = module.register_forward_hook(replace)
    try:
        for ids, mask in itertools.islice(_batches(tokenizer, texts, context_length, batch_size, framing), max_batches):
            run["keep"] = _keep(mask, framing, exclude_bos)
            # Right padding: a real target always follows a real input, so masking targets is enough.
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100).to(device)  # (B, T-1)
            for mode in sums:
                run["mode"] = mode
                with torch.no_grad():
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits  # (B, T, V)
                    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum")
                sums[mode] += loss.item()
            count += int((targets != -100).sum())
    finally:
        handle.remove()
        if was_training:
            sae.train()
    if count == 0:
        raise SparseAEError(
            "texts", expected="documents of at least two tokens", got="nothing to predict", fix="Give longer or more documents."
        )
    clean, with_sae, zero = (sums[k] / count for k in ("clean", "sae", "zero"))
    return {
        "ce_loss_clean": clean,
        "ce_loss_with_sae": with_sae,
        "ce_loss_zero": zero,
        "ce_loss_recovered": (zero - with_sae) / (zero - clean) if zero != clean else math.nan,
        "tokens": count,
    }
