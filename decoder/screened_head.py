"""Greedy tokens from a pass's final hidden states, reading the head as bfloat16 (screened_head_kernel.c).

A one-token pass on a CPU costs what reading the weights costs, and the head is a fifth of them on
SmolLM2 (49,152 x 576 floats). Greedy verification wants only each row's largest logit: the kernel
computes every logit from a bfloat16 copy of the head (half the bytes; where the CPU multiplies
bfloat16 pairs (AVX512-BF16) the row is rounded too, and an instruction does twice the multiply-adds,
else the copy is widened to float32 in registers), keeps the tokens that a proven bound on the
approximation's error cannot rule out (a handful), and computes those in float32 from the model's
own weights. The answer is the argmax of float32 logits, by torch.argmax's rule; the kernel's comment
gives the bound and the proof, tests/decoder/test_screened_head.py checks it.

It runs on x86 CPUs with AVX-512 or AVX2 and FMA, for float32 heads without bias whose dimension is a
multiple of 16; elsewhere `ScreenedHead.of` says None and the full head and an argmax answer.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

try:  # built by the install where the compiler has the x86 intrinsics
    from decoder import _screened_head
except ImportError:
    _screened_head = None

TILE = 16  # tokens per tile of the bfloat16 copy (the kernel's TILE)
MAX_DIM = 4096  # the kernel's MAX_DIM
EXPONENT_BITS = 0x7F80  # a bfloat16 without any is subnormal (or zero): the copy holds zero, as flush-to-zero reads it
SIGN_BIT = -0x8000  # (as int16)
# Up to this many rows a pass's head is screened, by the instruction set of the kernel's code. Widening
# the copy, the screen and the float32 head are bound by the same multiply-adds beyond a few rows, and
# the screen adds its own work (crossover at 14-16 rows with AVX-512 on 2 Zen 5 cores, ad hoc; AVX2's
# registers hold fewer rows' sums, so it stops earlier). The pair products do half the instructions:
# on the same cores 24 rows 1.9 ms against 3.2, 64 rows 4.8 against 7.7 (ad hoc); beyond 64, rarely
# reached, the scratch of the bounds grows (196 KB a row) and the float32 head answers.
SCREENED_ROWS = {"avx512bf16": 64, "avx512": 12, "avx2": 4}
LARGEST_WEIGHT = 1e6  # heads beyond (or not finite) are left to float32 (the kernel's sums stay finite below)


@dataclass(frozen=True)
class BFloat16Head:
    """A head's bfloat16 tiles and per-token error bounds, made once per weight tensor (engines share it)."""

    tiles: np.ndarray  # uint32: per 16 tokens, per pair of dimensions, the 16 tokens' two halves
    error: np.ndarray  # float32 per token (padded): the largest |w - w'| of its row
    largest: np.ndarray  # float32 per token (padded): the largest |w| or |w'| of its row

    @classmethod
    def of(cls, weight: torch.Tensor) -> BFloat16Head:
        """The copy of this weight tensor, made on first use and kept while the tensor lives."""
        key = id(weight)
        if key not in _MADE or _MADE[key][0]() is not weight:
            _MADE[key] = (weakref.ref(weight, lambda _: _MADE.pop(key, None)), cls.made(weight))
        return _MADE[key][1]

    @classmethod
    def made(cls, weight: torch.Tensor) -> BFloat16Head:
        vocab, dim = weight.shape
        exact = torch.zeros(-(-vocab // TILE) * TILE, dim)
        exact[:vocab] = weight.detach()
        halves = exact.bfloat16().view(torch.int16)
        halves = torch.where(halves & EXPONENT_BITS != 0, halves, halves & SIGN_BIT)  # subnormals to signed zero
        rounded = halves.view(torch.bfloat16).float()
        # Both exact in float32 (w - w' is, w' being w rounded), then up to the next float, never down.
        error = (exact - rounded).abs().amax(dim=1).numpy()
        largest = torch.maximum(exact.abs(), rounded.abs()).amax(dim=1).numpy()
        # The kernel's layout: per tile, per pair of dimensions (2j, 2j + 1), the 16 tokens' two halves as
        # one uint32, the first in the low bits (a shift and a mask widen each to float32).
        pairs = halves.view(len(exact) // TILE, TILE, dim // 2, 2).permute(0, 2, 1, 3).contiguous()
        return cls(
            pairs.view(torch.int32).numpy().view(np.uint32).reshape(-1),
            np.nextafter(error, np.float32(np.inf)),
            np.nextafter(largest, np.float32(np.inf)),
        )


_MADE: dict[int, tuple[weakref.ref, BFloat16Head]] = {}  # by the weight's id (tensors compare elementwise)


class ScreenedHead:
    """Greedy tokens through a head's bfloat16 copy (shared) and its float32 weight (the model's own);
    the scratch of a call is this object's, so each engine has its own."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.vocab, self.dim = weight.shape
        self.most_rows = SCREENED_ROWS[_screened_head.instruction_set()]  # what a pass screens at most
        self.weight = weight.detach().contiguous()
        self.copy = BFloat16Head.of(weight)
        self.padded_vocab = len(self.copy.error)
        self._upper = np.empty(0, np.float32)

    @classmethod
    def of(cls, head: nn.Module) -> ScreenedHead | None:
        """The screen of a linear head, or None where the kernel does not take it or cannot run."""
        weight = getattr(head, "weight", None)
        if _screened_head is None or not _screened_head.available() or not isinstance(head, nn.Linear):
            return None
        if head.bias is not None or weight.dtype != torch.float32 or weight.device.type != "cpu":
            return None
        dim = weight.shape[1]
        if dim % TILE != 0 or dim > MAX_DIM or not bool(weight.abs().max() < LARGEST_WEIGHT):
            return None  # (NaN fails the comparison too)
        return cls(weight)

    def tokens(self, hidden: torch.Tensor) -> list[int]:
        """Each row's greedy token (the argmax of its float32 logits) for final hidden states [n, dim]."""
        if hidden.dtype != torch.float32 or hidden.dim() != 2 or hidden.shape[1] != self.dim or len(hidden) == 0:
            raise ValueError(f"expected float32 hidden states [rows, {self.dim}]")
        hidden = hidden.contiguous()
        rows = hidden.shape[0]
        if len(self._upper) < rows * self.padded_vocab:  # scratch, kept: a fresh one costs page faults
            self._upper = np.empty(rows * self.padded_vocab, np.float32)
        return _screened_head.tokens(
            hidden.data_ptr(),
            rows,
            self.copy.tiles,
            self.copy.error,
            self.copy.largest,
            self.weight.data_ptr(),
            self.vocab,
            self.padded_vocab,
            self.dim,
            self._upper,
        )
