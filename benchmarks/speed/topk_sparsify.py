"""Speed worker: EleutherAI sparsify's TopK SAE trained by its own per-step recipe (sparsify.Trainer, loss_fn "fvu").

sparsify's Trainer only trains on a Hugging Face model's hooked activations, so
this worker replays, on each array batch, what Trainer.fit and its forward hook
do per step for one autoencoding SAE (no DDP, grad_acc_steps = micro_acc_steps
= 1): on step 0 b_dec is set to the batch mean; every step
SparseCoder.set_decoder_norm_to_unit_norm(), the dead mask
(num_tokens_since_fired > dead_feature_threshold), SparseCoder.forward with the
batch's total variance (fused_encoder + eager embedding_bag decoder on CPU, AuxK
with k_aux = d_in // 2 when latents are dead), loss = fvu + auxk_alpha * auxk_loss,
backward, remove_gradient_parallel_to_decoder_directions(), Adam step, zero_grad
and the did_fire / num_tokens_since_fired update. Left out: wandb logging,
checkpoints and the LR scheduler (Trainer warms Adam up over 1000 steps; here the
LR is constant, like every contender). Needs requirements-sparsify.txt:

    benchmarks/.venvs/sparsify/bin/python benchmarks/speed/topk_sparsify.py \
        --config '{"train": "train.npy", "test": "test.npy", "steps": 40, "warmup": 3}' --out sparsify.json
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import version

import torch
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.config import TrainConfig
from topk_common import Config, Worker, autocast, run

DEFAULT_DEAD_TOKENS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}["dead_feature_threshold"]


def build(cfg: Config) -> Worker:
    # Trainer: torch.manual_seed(seed), then SparseCoder(d_in, cfg.sae, device, dtype=torch.float32).
    sae = SparseCoder(cfg.d_in, SparseCoderConfig(activation="topk", num_latents=cfg.n_latents, k=cfg.k), "cpu",
                      dtype=torch.float32)  # fmt: skip
    # Trainer's "adam" case without bitsandbytes: torch.optim.Adam over one param group at the given lr.
    optimizer = torch.optim.Adam([dict(params=sae.parameters(), lr=cfg.lr)])
    auxk_alpha = cfg.aux_k_coef
    dead_threshold = DEFAULT_DEAD_TOKENS if cfg.dead_window_steps is None else cfg.dead_window_steps * cfg.batch_size
    num_tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, dtype=torch.bool)
    state = {"global_step": 0}

    def step(x: torch.Tensor) -> torch.Tensor:
        # --- Trainer.fit's forward hook ---
        if state["global_step"] == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)  # centre the pre-activations at initialisation
        if sae.cfg.normalize_decoder:
            sae.set_decoder_norm_to_unit_norm()
        dead_mask = num_tokens_since_fired > dead_threshold if auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        with autocast(cfg):
            out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
            did_fire[out.latent_indices.flatten()] = True
            loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.div(1).backward()  # acc_steps = 1
        # --- Trainer.fit after the model's forward ---
        if sae.cfg.normalize_decoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            num_tokens_since_fired.add_(x.shape[0])
            num_tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        state["global_step"] += 1
        return out.auxk_loss.detach()

    @torch.no_grad()
    def encode_decode(x: torch.Tensor):
        top_acts, top_indices, _ = sae.encode(x)  # (n, k) each
        return sae.decode(top_acts, top_indices), (top_acts, top_indices)

    window = f"{dead_threshold:,} tokens" + ("" if cfg.dead_window_steps is None else f" ({cfg.dead_window_steps} batch)")
    notes = (
        "sparsify.SparseCoder (activation topk, normalize_decoder) driven by sparsify.Trainer.fit's per-step code: "
        "b_dec = first batch mean; set_decoder_norm_to_unit_norm() before each forward; SparseCoder.forward(x, y=x, "
        "dead_mask, total_variance) = fused_encoder (custom autograd: dense linear + relu + topk, index_add backward) "
        "+ eager embedding_bag decoder (no Triton on CPU); loss = fvu + auxk_alpha*auxk_loss with auxk_alpha="
        f"{auxk_alpha:g}, k_aux = d_in//2 = {cfg.d_in // 2} (sparsify's fixed heuristic, scaled down when fewer are dead); "
        f"dead = num_tokens_since_fired > dead_feature_threshold = {window} (library default "
        f"{DEFAULT_DEAD_TOKENS:,} tokens); a latent fires when it is among a row's top-k indices; "
        "remove_gradient_parallel_to_decoder_directions(); torch.optim.Adam constant lr (Trainer's 1000-step warmup "
        "left out); no grad clipping. AuxK gradients reach W_dec only: FusedEncoder.backward drops grad_preacts. "
        + ("bfloat16: torch.autocast('cpu') around forward+loss (only the encoder matmul runs in bf16; the "
           "decoder casts the codes back to float32)." if cfg.autocast else "float32.")
    )  # fmt: skip
    return Worker(step, encode_decode, notes)


if __name__ == "__main__":
    run("sparsify", version("eai-sparsify"), build)
