"""Linear layers of float32 decoding on a CPU, through panel_linear_kernel.c.

Verification passes feed 1 to ~64 tokens. Their products read every weight once a pass, and oneDNN
computes on each block of weights after reading it; the kernel reads the next panel of weights
while it computes on this one, so up to ~20 fed tokens cost about what one does (figures in
docs/BENCHMARKS.md, `python benchmarks/product_costs.py`). The weights are packed once, in panels
of `PANEL` output columns laid out [k][PANEL].

Used where the model is float32 on a CPU that runs AVX-512 or AVX2 with FMA (the kernel has code for
each; `instruction_set()` says which runs); elsewhere oneDNN's prepacked products answer
(projections.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

try:  # built by the install (panel_linear_kernel.c)
    from decoder import _panel_linear
except ImportError:  # built without a C compiler: oneDNN's products answer
    _panel_linear = None

PANEL = 48  # output columns of a panel (the kernel's PANEL): 3 AVX-512 vectors, or 3 AVX2 tiles of 16


def instruction_set() -> str | None:
    """The kernel's code that runs on this CPU: "avx512", "avx2", or None (not built, or neither runs)."""
    return None if _panel_linear is None else _panel_linear.instruction_set()


def available(weight: torch.Tensor) -> bool:
    """Whether this weight's products can run through the kernel here."""
    return weight.dtype == torch.float32 and weight.device.type == "cpu" and instruction_set() is not None


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[n, k] as [ceil(n / PANEL), k, PANEL]: panel p holds output columns p*PANEL.. (zeros past n)."""
    n, k = weight.shape
    panels = -(-n // PANEL)
    padded = torch.zeros(panels * PANEL, k, dtype=weight.dtype)
    padded[:n] = weight
    return padded.view(panels, PANEL, k).transpose(1, 2).contiguous()


def linear(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """x [..., k] times the packed weight: [..., out_features]."""
    panels, k, panel = packed.shape
    if x.shape[-1] != k or panel != PANEL or not packed.is_contiguous() or -(-out_features // PANEL) != panels:
        raise ValueError(f"input [..., {x.shape[-1]}] does not fit a packed weight of {out_features} x {k}")
    if x.dtype != torch.float32 or packed.dtype != torch.float32:
        raise ValueError("the panel kernel multiplies float32")
    return rows_through(_panel_linear.multiply, x, packed, out_features)


def rows_through(
    multiply: Callable[[int, int, int, int, int, int], None], x: torch.Tensor, packed: torch.Tensor, out_features: int
) -> torch.Tensor:
    """x [..., k] as rows through a kernel's `multiply(x, rows, k, packed, y, n)` (integer addresses):
    [..., out_features], float32."""
    k = x.shape[-1]
    rows = x.reshape(-1, k).contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    if rows.shape[0]:
        multiply(rows.data_ptr(), rows.shape[0], k, packed.data_ptr(), out.data_ptr(), out_features)
    return out.view(*x.shape[:-1], out_features)
