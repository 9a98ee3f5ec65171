"""A GGUF model's Q4_1 weights as the products' input: 4-bit codes instead of float32 copies.

SmolLM2 ships as Q4_1: each row of a weight is cut into blocks of 32, each block a float16 scale d,
a float16 offset m and 32 codes q in 0..15. transformers dequantizes it into the float32 model we
verify with: w = (float)d * q + (float)m (gguf's own rule), one rounding. q4_panel_kernel.c rebuilds
each weight the same way, to the bit, in registers, so its products equal the float32 panel kernel's
bit for bit while reading a sixth of the bytes (5 bits a weight, the scales included): one fed token's
pass reads 66 MB of layer weights instead of 424 MB.

Nothing is taken on trust: the codes of each of a layer's linears are found in the GGUF file by name,
their rows matched to the float32 weight's rows by value (transformers permutes q and k's rows for
its rotary layout), and used only if every row of the codes, rebuilt, equals the model's row bit for
bit; otherwise that model runs the float32 products.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datastore_service.paths import cache_dir

from . import panel_linear

try:  # built by the install (q4_panel_kernel.c)
    from decoder import _q4_panel
except ImportError:  # built without a C compiler: the float32 products answer
    _q4_panel = None

PANEL = 32  # output columns of a panel (the kernel's PANEL)
BLOCK = 32  # weights of a row per scale and offset (Q4_1's block)
GGUF_BLOCK_BYTES = 20  # d, m (float16 each), then 32 codes in 16 bytes
Q4_1 = 3  # GGML's type number for Q4_1
# transformers' names of a Llama layer's linears, and GGUF's.
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# The products of one input, joined as projections.py joins them.
JOINTS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "output": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
}
CACHE_VERSION = 1


def available() -> bool:
    """Whether the kernel runs here (built, and the CPU has AVX-512)."""
    return _q4_panel is not None and _q4_panel.available()


@dataclass(frozen=True)
class Q4Rows:
    """Rows of a Q4_1 weight: scale d and offset m [n, k / BLOCK] (float16), codes [n, k] (uint8)."""

    scales: np.ndarray
    offsets: np.ndarray
    codes: np.ndarray

    @classmethod
    def of_gguf(cls, raw: np.ndarray) -> Q4Rows:
        """From GGUF's bytes of a Q4_1 tensor, [n, k / BLOCK * 20]."""
        n = raw.shape[0]
        blocks = np.ascontiguousarray(raw).reshape(n, -1, GGUF_BLOCK_BYTES)
        scales = blocks[:, :, 0:2].copy().view(np.float16)[:, :, 0]
        offsets = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0]
        packed = blocks[:, :, 4:]  # code j in the low nibble of byte j, code j + 16 in its high nibble
        codes = np.concatenate([packed & 0x0F, packed >> 4], axis=2).reshape(n, -1)
        return cls(scales, offsets, codes)

    def weights(self) -> np.ndarray:
        """The float32 weights, as GGUF dequantizes them: d * q + m in float32."""
        d = np.repeat(self.scales.astype(np.float32), BLOCK, axis=1)
        m = np.repeat(self.offsets.astype(np.float32), BLOCK, axis=1)
        return d * self.codes.astype(np.float32) + m

    def rows(self, order: np.ndarray) -> Q4Rows:
        return Q4Rows(self.scales[order], self.offsets[order], self.codes[order])

    def matching(self, weight: np.ndarray) -> Q4Rows | None:
        """These rows reordered to be `weight` [n, k] float32 bit for bit, or None if they are not."""
        rebuilt = self.weights()
        if rebuilt.shape != weight.shape:
            return None
        where = {row.tobytes(): index for index, row in enumerate(rebuilt)}
        order = np.array([where.get(row.tobytes(), -1) for row in np.ascontiguousarray(weight, np.float32)])
        if (order < 0).any():
            return None
        return self.rows(order)


def join(parts: list[Q4Rows]) -> Q4Rows:
    """Linears of one input as one weight, their rows end to end."""
    return Q4Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("scales", "offsets", "codes")))


def pack(rows: Q4Rows) -> torch.Tensor:
    """The kernel's layout, [n / PANEL, k / BLOCK, block bytes] (uint8): per panel and block of k, the
    PANEL columns' d, their m, then per k the codes, column j low and column j + 16 high in byte j."""
    n, k = rows.codes.shape
    if n % PANEL or k % BLOCK:
        raise ValueError(f"a {n} x {k} weight does not cut into panels of {PANEL} and blocks of {BLOCK}")
    panels, blocks = n // PANEL, k // BLOCK

    def by_panel(values: np.ndarray) -> np.ndarray:  # [n, blocks] float16 -> [panels, blocks, PANEL * 2] bytes
        return values.reshape(panels, PANEL, blocks).transpose(0, 2, 1).copy().view(np.uint8)

    codes = rows.codes.reshape(panels, PANEL, blocks, BLOCK).transpose(0, 2, 3, 1)  # [panels, blocks, k, column]
    nibbles = (codes[..., : PANEL // 2] | (codes[..., PANEL // 2 :] << 4)).reshape(panels, blocks, -1)
    packed = np.concatenate([by_panel(rows.scales), by_panel(rows.offsets), nibbles.astype(np.uint8)], axis=2)
    return torch.from_numpy(np.ascontiguousarray(packed))


def rebuilt(packed: torch.Tensor, panels: slice = slice(None)) -> np.ndarray:
    """The float32 weights [n, k] of `pack`'s layout (of some of its panels), as the kernel rebuilds them."""
    chosen = packed.numpy()[panels]
    count, blocks, _ = chosen.shape
    scales = chosen[:, :, : 2 * PANEL].copy().view(np.float16).astype(np.float32)  # [panels, blocks, PANEL]
    offsets = chosen[:, :, 2 * PANEL : 4 * PANEL].copy().view(np.float16).astype(np.float32)
    nibbles = chosen[:, :, 4 * PANEL :].reshape(count, blocks, BLOCK, PANEL // 2)
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=3).astype(np.float32)  # [panels, blocks, k, column]
    weights = codes * scales[:, :, None, :] + offsets[:, :, None, :]
    return weights.transpose(0, 3, 1, 2).reshape(count * PANEL, blocks * BLOCK)


def linear(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """x [..., k] times the packed weight: [..., out_features]."""
    panels, blocks, _ = packed.shape
    k = blocks * BLOCK
    if x.shape[-1] != k or panels * PANEL != out_features or packed.dtype != torch.uint8 or not packed.is_contiguous():
        raise ValueError(f"input [..., {x.shape[-1]}] does not fit a packed Q4_1 weight of {out_features} x {k}")
    if x.dtype != torch.float32:
        raise ValueError("the Q4_1 panel kernel multiplies float32 inputs")
    return panel_linear.rows_through(_q4_panel.multiply, x, packed, out_features)


class GgufCodes:
    """A GGUF file's Q4_1 codes of a Llama model's linears, matched to the loaded model's weights;
    packed once per file and kept under <cache>/q4/ (reading the file takes seconds)."""

    def __init__(self, gguf: Path) -> None:
        self.gguf = gguf
        self._tensors: dict | None = None

    def rows_of(self, layer: int, linear: str, weight: torch.Tensor) -> Q4Rows | None:
        """The codes of layer `layer`'s `linear` (transformers' name), rows matched to `weight`."""
        tensor = self._gguf_tensors().get(f"blk.{layer}.{GGUF_NAMES.get(linear, '')}.weight")
        if tensor is None or int(tensor.tensor_type) != Q4_1:
            return None
        return Q4Rows.of_gguf(np.asarray(tensor.data)).matching(weight.detach().float().numpy())

    def _gguf_tensors(self) -> dict:
        if self._tensors is None:
            from gguf import GGUFReader  # transformers' own GGUF dependency

            self._tensors = {tensor.name: tensor for tensor in GGUFReader(str(self.gguf)).tensors}
        return self._tensors


def packed_layers(model: torch.nn.Module, gguf: Path) -> list[dict[str, torch.Tensor]] | None:
    """Per decoder layer, its joint products' packed codes ("qkv", "output", "gate_up", "down"), or
    None where any linear's codes are missing or differ from the model's float32 weights. Cached per
    GGUF file and model weights."""
    layers = list(model.model.layers)
    key = _cache_key(gguf)
    path = cache_dir("q4") / f"{gguf.stem}-{key}.npz"
    if path.exists():
        with np.load(path) as saved:
            # A model changed in place since (its file the same) must not meet old codes: they serve
            # only the weights they were matched to, bit for bit, named by their fingerprint.
            if np.array_equal(saved["fingerprint"], _fingerprint(layers)):
                return None if "missing" in saved else _unflatten(saved, len(layers))
    codes = GgufCodes(gguf)
    result: list[dict[str, torch.Tensor]] | None = []
    for index, layer in enumerate(layers):
        packed = {}
        for joint, names in JOINTS.items():
            parts = [codes.rows_of(index, name, layer.get_submodule(name).weight) for name in names]
            if any(part is None for part in parts) or any(layer.get_submodule(n).bias is not None for n in names):
                result = None
                break
            rows = join(parts)
            if rows.codes.shape[0] % PANEL or rows.codes.shape[1] % BLOCK:
                result = None
                break
            packed[joint] = pack(rows)
        if result is None:
            break
        result.append(packed)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial.npz")  # processes packing at once each write their own
    fingerprint = _fingerprint(layers)
    if result is None:
        np.savez(partial, missing=np.zeros(0), fingerprint=fingerprint)
    else:
        arrays = {f"{i}.{name}": t.numpy() for i, layer in enumerate(result) for name, t in layer.items()}
        np.savez(partial, fingerprint=fingerprint, **arrays)
    partial.rename(path)
    return result


def _fingerprint(layers: list[torch.nn.Module]) -> np.ndarray:
    """Per linear weight, float64 sums of all its values and of every third (so a moved value shows too)."""
    sums = []
    for layer in layers:
        for names in JOINTS.values():
            for name in names:
                weight = layer.get_submodule(name).weight.detach().flatten()
                sums += [float(weight.sum(dtype=torch.float64)), float(weight[::3].sum(dtype=torch.float64))]
    return np.array(sums)


def _unflatten(saved: np.lib.npyio.NpzFile, layers: int) -> list[dict[str, torch.Tensor]]:
    result: list[dict[str, torch.Tensor]] = [{} for _ in range(layers)]
    for name in saved.files:
        if name == "fingerprint":
            continue
        index, joint = name.split(".", 1)
        result[int(index)][joint] = torch.from_numpy(saved[name])
    return result


def _cache_key(gguf: Path) -> str:
    """The GGUF file (path, size, time): a changed file packs anew (a changed model shows in the fingerprint)."""
    stat = gguf.stat()
    described = json.dumps([CACHE_VERSION, str(gguf.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(described.encode()).hexdigest()[:12]
