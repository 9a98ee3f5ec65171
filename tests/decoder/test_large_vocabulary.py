"""Gemma-3-270M (262,144 token ids, more than 16 bits): store, lookup and lossless decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crest_cli.benchmark_prompts import humaneval_prompts
from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store
from datastore_service.lookup.draft_index import DraftIndex
from datastore_service.sizes import Budget
from decoder.draft_sources import IndexSource
from decoder.node_budget import NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.speculative import SpeculativeDecoder
from decoder.target_model import load_target


@pytest.fixture(scope="module")
def gemma():
    return load_target("gemma3")


@pytest.fixture(scope="module")
def gemma_store(code_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("gemma") / "code.duckdb"
    build_store(
        corpus_spec(str(code_corpus), glob="*.py"),
        "gemma3",
        output,
        BuildParams(budget=Budget(bytes=8_000_000)),
        progress=False,
    )
    return output


def test_store_keeps_ids_above_16_bits(gemma, gemma_store: Path):
    index = DraftIndex.load(gemma_store)
    assert index.info.vocab_size == 262_144
    assert index.info.tokenizer_fingerprint == gemma.tokenizer_fingerprint
    assert int(index.node_tokens.max()) > 65_535 or int(index.context_matrix.max()) > 65_535


def test_greedy_with_gemma_equals_plain_greedy(gemma, gemma_store: Path):
    decoder = SpeculativeDecoder(gemma, WithPromptLookup(IndexSource(DraftIndex.load(gemma_store))), NodeBudget(16))
    for prompt in humaneval_prompts(2):
        ids = gemma.encode_prompt(prompt, chat=False)
        generation = decoder.generate(ids, 40)
        with torch.inference_mode():
            plain = gemma.model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)
        assert generation.tokens == plain[0, len(ids) :].tolist()
        assert generation.mean_accepted_length > 1.0
