"""`model.generate(..., custom_generate=crest_generate)` gives what plain `generate` gives: the same
greedy tokens (logits processors, stopping criteria, padding included), the same sampling
distribution, and the streamer sees every token."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from datastore_service.errors import CrestError
from decoder.acceptance import SamplingParams
from decoder.hf_generate import _ENGINES, crest_generate
from tests.decoder.test_sampling import CRITICAL_35, FixedTreeSource, chi_square, exact_pair_distribution, small_target
from tests.decoder.tiny_models import tiny_gpt2, tiny_llama

PROMPT = [5, 9, 2, 33, 17, 8, 40, 1, 5, 9, 2, 33]


@pytest.fixture(scope="module")
def model():
    llama = tiny_llama().model
    llama.generation_config.pad_token_id = 0
    return llama


def both(model, ids: torch.Tensor, **settings) -> tuple[list, list]:
    plain = model.generate(ids, **settings)
    drafted = model.generate(ids, custom_generate=crest_generate, **settings)
    return plain.tolist(), drafted.tolist()


@pytest.mark.parametrize("settings", [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 2}])
def test_greedy_output_equals_plain_generate(model, settings):
    plain, drafted = both(model, torch.tensor([PROMPT]), max_new_tokens=40, do_sample=False, **settings)
    assert drafted == plain


def test_greedy_passes_answer_tokens_without_processors_and_logits_with_them(model):
    """No logits processor: the passes give tokens (their head may be screened, screened_head.py); with
    one, acceptance reads the processed scores of full logits."""
    both(model, torch.tensor([PROMPT]), max_new_tokens=4, do_sample=False)  # the engine, made
    forward = next(iter(_ENGINES[model].values())).forward
    calls = []
    greedy_ragged = forward.greedy_ragged
    forward.greedy_ragged = lambda *args, **kwargs: calls.append(1) or greedy_ragged(*args, **kwargs)
    try:
        for settings, tokens_asked in (({}, True), ({"repetition_penalty": 1.3}, False)):
            calls.clear()
            plain, drafted = both(model, torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, **settings)
            assert drafted == plain
            assert bool(calls) == tokens_asked
    finally:
        del forward.greedy_ragged


def test_a_batch_of_two_prompt_lengths_equals_plain_generate(model):
    ids = torch.tensor([[0, 0, 0, 0] + PROMPT[:8], PROMPT])
    mask = torch.tensor([[0, 0, 0, 0] + [1] * 8, [1] * 12])
    plain, drafted = both(model, ids, attention_mask=mask, max_new_tokens=25, do_sample=False)
    assert drafted == plain


class StopAfter(StoppingCriteria):
    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_stopping_criteria_stop_where_plain_generate_stops(model):
    free = model.generate(torch.tensor([PROMPT]), max_new_tokens=30, do_sample=False)[0, len(PROMPT) :].tolist()
    criteria = StoppingCriteriaList([StopAfter(free[9])])
    plain, drafted = both(model, torch.tensor([PROMPT]), max_new_tokens=30, do_sample=False, stopping_criteria=criteria)
    assert drafted == plain and len(plain[0]) <= len(PROMPT) + 10


class Collect(BaseStreamer):
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.ended = False

    def put(self, value):
        self.tokens.extend(value.flatten().tolist())

    def end(self):
        self.ended = True


def test_the_streamer_receives_prompt_then_every_token(model):
    streamer = Collect()
    output = model.generate(
        torch.tensor([PROMPT]),
        max_new_tokens=20,
        do_sample=False,
        crest_streamer=streamer,
        custom_generate=crest_generate,
    )
    assert streamer.tokens == output[0].tolist() and streamer.ended


def test_sampling_keeps_the_distribution_of_plain_generate():
    target = small_target()
    model = target.model
    expected = exact_pair_distribution(target, SamplingParams())
    pairs: Counter = Counter()
    rows, calls = 100, 30
    torch.manual_seed(11)
    for _ in range(calls):
        output = model.generate(
            torch.tensor([[1, 4, 2]] * rows),
            max_new_tokens=2,
            do_sample=True,
            top_k=0,
            pad_token_id=0,
            custom_generate=crest_generate,
            draft_source=FixedTreeSource(),
            prompt_lookup=False,
        )
        pairs.update(tuple(row) for row in output[:, 3:].tolist())
    assert chi_square(pairs, expected, rows * calls) < CRITICAL_35


def test_models_outside_the_llama_family_get_a_clear_error():
    gpt2 = tiny_gpt2().model
    with pytest.raises(CrestError, match="Llama-family"):
        gpt2.generate(torch.tensor([PROMPT]), max_new_tokens=5, custom_generate=crest_generate)
