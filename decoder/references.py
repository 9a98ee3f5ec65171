"""The target's plain greedy outputs, computed once and cached per (model, dtype, prompt, length).

Every replay and every speed comparison needs them; a rerun only generates what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from tqdm import tqdm

from datastore_service.paths import cache_dir

from .target_model import TargetModel


def _key(target: TargetModel, prompt: Sequence[int], max_new_tokens: int) -> str:
    identity = [target.name, str(target.model.dtype), str(target.device.type), list(prompt), max_new_tokens]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


@torch.inference_mode()
def greedy_references(
    target: TargetModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, progress: bool = True
) -> list[list[int]]:
    folder = cache_dir("references")
    outputs = []
    for prompt in tqdm(prompts, desc="greedy references", unit="prompt", disable=not progress):
        path = folder / f"{_key(target, prompt, max_new_tokens)}.json"
        if path.exists():
            outputs.append(json.loads(path.read_text()))
            continue
        device = target.device
        generated = target.model.generate(
            torch.tensor([list(prompt)], device=device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
        )
        tokens = generated[0, len(prompt) :].tolist()
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(tokens))
        partial.replace(path)
        outputs.append(tokens)
    return outputs
