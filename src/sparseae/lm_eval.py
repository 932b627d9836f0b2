"""A run on language-model activations, scored in its language model: the CE loss recovered.

``run_language_model`` finds the language model and layer a run was trained on, whether it
read them live (``--data lm``) or from a ``cache-activations`` directory;
``ce_loss_recovered_with`` runs the language model with the SAE in that layer's place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparseae._config import from_dict
from sparseae.data import ActivationConfig, DataConfig, ShardReader, is_shard_dir


def run_language_model(run: dict[str, Any], what: str) -> ActivationConfig | None:
    """The activations a run was trained on; None when they did not come from a language model.

    Args:
        run: The run's config.json, e.g. from ``sparseae.rundir.read_config``.
        what: Names the run in errors (its directory).
    """
    data = from_dict(DataConfig, run["data"], f"{what} data") if run["data"] else None
    if data is None:
        return None
    if data.lm is not None:
        return data.lm
    if is_shard_dir(Path(data.source)):
        meta = ShardReader(data.source).metadata
        if meta.get("source") == "lm-activations":
            return from_dict(ActivationConfig, meta["config"], f"{data.source} manifest")
    return None


def ce_loss_recovered_with(sae: Any, lm: ActivationConfig, *, max_batches: int = 16) -> dict[str, float]:
    """CE loss recovered of ``sae`` in the language model and layer of ``lm``, on its texts.

    See `sparseae.data.activations.ce_loss_recovered` for the figures it returns.
    """
    from sparseae.data.activations import ce_loss_recovered, load_lm, read_texts

    lm_model, tokenizer = load_lm(lm.model, lm.device)
    texts = read_texts(lm.text, text_column=lm.text_column, split=lm.split)
    return ce_loss_recovered(
        sae, lm_model, tokenizer, lm.module, texts, context_length=lm.context_length, batch_size=lm.batch_size,
        max_batches=max_batches, exclude_bos=lm.exclude_bos,
    )  # fmt: skip
