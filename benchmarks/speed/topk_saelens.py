"""Speed worker: SAELens's TopKTrainingSAE trained through its own SAETrainer.step.

Builds TopKTrainingSAE (TopKTrainingSAEConfig: library defaults, i.e.
rescale_acts_by_decoder_norm, decoder_init_norm 0.1, dense TopK activations,
with k and aux_loss_coefficient from the config) and an SAETrainer
(SAETrainerConfig: Adam, constant LR, autocast when precision is bfloat16),
then calls the trainer's public per-step seam, SAETrainer.step(batch), exactly
as SAETrainer.fit does each step (with maybe_reset_sparsity before it and
n_training_steps += 1 after it): training_forward_pass (MSE summed over d_in,
mean over the batch, plus the TopK AuxK loss on dead latents), backward,
clip_grad_norm_(1.0), Adam step, zero_grad, LR scheduler step and the
dead-latent bookkeeping. Left out: wandb logging, evals and checkpoints, which
fit skips anyway with logging off. Needs requirements-saelens.txt:

    benchmarks/.venvs/saelens/bin/python benchmarks/speed/topk_saelens.py \
        --config '{"train": "train.npy", "test": "test.npy", "steps": 40, "warmup": 3}' --out saelens.json
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import version

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from topk_common import Config, Worker, run

DEFAULT_DEAD_STEPS = {f.name: f.default for f in dataclasses.fields(SAETrainerConfig)}["dead_feature_window"]


def build(cfg: Config) -> Worker:
    sae_cfg = TopKTrainingSAEConfig(d_in=cfg.d_in, d_sae=cfg.n_latents, k=cfg.k, aux_loss_coefficient=cfg.aux_k_coef,
                                    dtype="float32", device="cpu")  # fmt: skip
    sae = TopKTrainingSAE(sae_cfg)
    dead_window = DEFAULT_DEAD_STEPS if cfg.dead_window_steps is None else cfg.dead_window_steps
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,  # LanguageModelSAERunnerConfig's default; the constant scheduler ignores it
        device="cpu",
        autocast=cfg.autocast,
        dead_feature_window=dead_window,
    )
    # No data provider: the batches come from `run`, one per SAETrainer.step call.
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    sae.to(trainer_cfg.device)  # as SAETrainer.fit does first

    def step(x: torch.Tensor) -> torch.Tensor:
        trainer.maybe_reset_sparsity()
        out = trainer.step(x)
        trainer.n_training_steps += 1
        return out.losses["auxiliary_reconstruction_loss"].detach()

    @torch.no_grad()
    def encode_decode(x: torch.Tensor):
        feature_acts = sae.encode(x)  # (n, n_latents), dense
        return sae.decode(feature_acts), feature_acts

    notes = (
        "sae_lens TopKTrainingSAE (TopKTrainingSAEConfig defaults: rescale_acts_by_decoder_norm=True, i.e. the "
        "decoder is not renormalised but the pre-activations are scaled by ||W_dec|| rows and the decoder input "
        "divided by them; decoder_init_norm=0.1; use_sparse_activations=False, dense codes and dense decoder "
        "matmul) trained by SAETrainer.step per batch: training_forward_pass = sum-over-d_in MSE mean over batch "
        f"+ aux_loss_coefficient={cfg.aux_k_coef:g} * TopK AuxK (k_aux = d_in//2 = {cfg.d_in // 2}, SAELens's fixed "
        "heuristic, scaled down when fewer are dead; dense scatter of the aux codes then a dense matmul with W_dec); "
        f"dead = n_forward_passes_since_fired > dead_feature_window = {dead_window} steps (library default "
        f"{DEFAULT_DEAD_STEPS}); a latent fires when its code is nonzero; backward, clip_grad_norm_(1.0), Adam "
        "(0.9, 0.999) constant lr, zero_grad, scheduler step. No gradient projection (SAELens does none). "
        + ("bfloat16: SAETrainerConfig(autocast=True), SAELens's own torch.autocast(device 'cpu', bfloat16) around "
           "the forward and loss (the dense matmuls run in bf16; adding the float32 biases promotes back to float32, so "
           "topk and the losses are float32)." if cfg.autocast else "float32.")
    )  # fmt: skip
    return Worker(step, encode_decode, notes)


if __name__ == "__main__":
    run("sae-lens", version("sae-lens"), build)
