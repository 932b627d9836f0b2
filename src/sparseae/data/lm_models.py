"""The language models whose activations are collected: causal ones and encoders, their hookpoints and special tokens.

* **Which class.** A checkpoint whose saved ``architectures`` name a causal language model
  (``GPT2LMHeadModel``, ``LlamaForCausalLM``, any class ``AutoModelForCausalLM`` loads) is
  loaded with its unembedding; any other (``BertModel``, ``BertForMaskedLM``, a
  sentence-transformers folder) with ``AutoModel``, as a bare encoder. `is_causal_lm` tells
  them apart afterwards: only a causal model has CE loss recovered and logit tables.
* **Offline.** A local folder is loaded with ``local_files_only``; a hub name is looked up
  in the Hugging Face cache first, and only fetched when it is not there, so that a cached
  model loads without a network (and without the hub's retries when there is none). A
  cached name is therefore not refreshed: delete it from the cache to fetch it again.
* **Hookpoints.** ``module`` is one dotted name from ``named_modules()``, a comma list of
  them, or glob patterns (``encoder.layer.*``) matched segment by segment: ``*`` does not
  cross a dot, so ``transformer.h.*`` is the blocks, not their sub-modules
  (``transformer.h.*.mlp`` is the MLPs). `resolve_modules` gives them in the model's order.
* **Framing.** A causal model's sequences start with BOS (when the tokenizer has one); an
  encoder's are framed as it was trained, ``[CLS] ... [SEP]`` (``<s> ... </s>`` for
  RoBERTa). `Framing` says which tokens lead and close each sequence.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from sparseae.devices import pick_device
from sparseae.errors import SparseAEError

INSTALL_FIX = "Install the language-model extra: pip install 'sparseae[lm]'."
GLOB_CHARS = "*?["


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise SparseAEError("transformers", expected="the transformers package", got="not installed", fix=INSTALL_FIX) from None
    return transformers


def _causal_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return {name for name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() if isinstance(name, str)}


def _pretrained(cls: Any, name_or_path: str) -> Any:
    """``cls.from_pretrained(name_or_path)``: a folder, or a name from the cache, without the network when possible."""
    if Path(name_or_path).is_dir():
        return cls.from_pretrained(name_or_path, local_files_only=True)
    try:
        return cls.from_pretrained(name_or_path, local_files_only=True)
    except OSError:  # not (wholly) in the cache: ask the hub
        return cls.from_pretrained(name_or_path)


def is_causal_config(config: Any) -> bool:
    """Whether a transformers config describes a causal language model (see the module's docstring)."""
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        causal = _causal_classes()
        return any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    kind = config.model_type
    return bool(config.is_decoder) or kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` predicts the next token through an unembedding (CE loss recovered and logit tables apply)."""
    transformers = _transformers()
    if not isinstance(model, transformers.PreTrainedModel) or model.get_output_embeddings() is None:
        return False
    name = type(model).__name__
    return name in _causal_classes() or name.endswith(("ForCausalLM", "LMHeadModel"))


def load_lm(name_or_path: str, device: str = "auto") -> tuple[nn.Module, Any]:
    """A language model in eval mode on ``device``, and its tokenizer: a causal model with its unembedding,
    or an encoder (BERT, a sentence-transformers folder) without a head; `is_causal_lm` says which.

    A tokenizer without a pad token gets its EOS token as pad (GPT-2's has none); pads
    never reach the rows, which are picked by the attention mask.
    """
    transformers = _transformers()
    try:
        config = _pretrained(transformers.AutoConfig, name_or_path)
        tokenizer = _pretrained(transformers.AutoTokenizer, name_or_path)
        causal = is_causal_config(config)
        if not causal and getattr(config, "is_encoder_decoder", False):
            raise SparseAEError(
                f"model {name_or_path!r}",
                expected="a causal language model or an encoder (BERT-like)",
                got=f"an encoder-decoder ({', '.join(config.architectures or [config.model_type])})",
                fix="Use a decoder-only or an encoder-only model.",
            )
        cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        model = _pretrained(cls, name_or_path)
    except OSError as e:
        raise SparseAEError(
            f"model {name_or_path!r}",
            expected="a Hugging Face model name or a local directory saved with save_pretrained",
            got=str(e).splitlines()[0] if str(e) else type(e).__name__,
            fix="Check the name or path (offline, the model must already be in the Hugging Face cache).",
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(pick_device(device)).eval(), tokenizer


@dataclass(frozen=True)
class Framing:
    """The special tokens around each sequence fed to the model: ``lead`` before its tokens, ``tail`` after."""

    lead: tuple[int, ...]
    tail: tuple[int, ...]

    @staticmethod
    def of(model: nn.Module, tokenizer: Any) -> Framing:
        """BOS first for a causal model (when there is one); [CLS] ... [SEP] (or BOS ... EOS) for an encoder."""
        if is_causal_lm(model):
            bos = tokenizer.bos_token_id
            return Framing(() if bos is None else (bos,), ())
        first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        return Framing(() if first is None else (first,), () if last is None else (last,))

    def frame(self, ids: list[int]) -> list[int]:
        return [*self.lead, *ids, *self.tail]


# --- hookpoints -----------------------------------------------------------------------------------------------------------


def module_names(model: nn.Module) -> list[str]:
    """The dotted names of every module of ``model`` (what ``module`` may be), in the model's order."""
    return [name for name, _ in model.named_modules() if name]


def _unknown(model: nn.Module, name: str, what: str) -> SparseAEError:
    names = module_names(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    if not close and any(c in name for c in GLOB_CHARS):  # a pattern is far from every name: compare its fixed part
        stem = name.split("*")[0].split("?")[0].split("[")[0].rstrip(".")
        close = difflib.get_close_matches(stem, names, n=5, cutoff=0.6)
    return SparseAEError(
        "module",
        expected=f"{what} of {type(model).__name__}",
        got=repr(name),
        fix=(f"Close matches: {', '.join(close)}. " if close else "")
        + "List every name with sparseae.data.activations.module_names(model) (or [n for n, _ in model.named_modules()]).",
    )


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The module of ``model`` called ``name`` (dotted, as in ``named_modules()``)."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    raise _unknown(model, name, "the name of a module")


def _matches(pattern: str, name: str) -> bool:
    """fnmatch segment by segment: ``*`` stays within one dotted part of the name."""
    parts, names = pattern.split("."), name.split(".")
    return len(parts) == len(names) and all(fnmatch.fnmatchcase(n, p) for p, n in zip(parts, names, strict=True))


def is_many(spec: str) -> bool:
    """Whether a ``module`` setting names several modules (a comma list or a pattern) rather than one."""
    return "," in spec or any(c in spec for c in GLOB_CHARS)


def resolve_modules(model: nn.Module, spec: str) -> list[str]:
    """The module names ``spec`` (a name, a comma list, glob patterns; see the module's docstring) picks, in the model's order."""
    names = module_names(model)
    picked: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if any(c in item for c in GLOB_CHARS):
            found = [n for n in names if _matches(item, n)]
            if not found:
                raise _unknown(model, item, "a pattern that matches modules")
            picked.update(found)
        else:
            find_module(model, item)
            picked.add(item)
    if not picked:
        raise SparseAEError(
            "module", expected="at least one module name", got=repr(spec), fix="Name a module, e.g. transformer.h.6."
        )
    return [n for n in names if n in picked]
