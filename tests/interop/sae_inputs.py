"""What the interop tests share: activation-like inputs, and a peer's SAE given a random state."""

from __future__ import annotations

import torch

D_IN = 16


def raw_inputs(n: int = 256, seed: int = 7) -> torch.Tensor:
    """Activation-like inputs: an offset, uneven scales and correlations, so preprocessing is not trivial."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D_IN, D_IN, generator=g) * torch.linspace(0.2, 3.0, D_IN)
    return torch.randn(n, D_IN, generator=g) @ mix + 2.0


def randomize(sae, seed: int = 3):
    """``sae`` (a SAELens or sparsify module) with every parameter drawn at random, in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return sae
