"""The static-cache engine is lossless: float32 greedy output equals `generate`, token for token, for
every tree shape, for batches whose sequences differ in length and finish at different steps;
sampling keeps the target's distribution; the budget drafts nothing when drafting does not pay."""

from __future__ import annotations

import itertools
import time
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from datastore_service.draft import DraftTree
from datastore_service.errors import CrestError
from decoder.acceptance import SamplingParams
from decoder.calibration import AcceptanceCalibration
from decoder.cuda_graphs import GraphedPasses
from decoder.decoders import make_decoder, resolve_engine
from decoder.draft_gate import DraftGate
from decoder.draft_sources import NoDrafts
from decoder.engine import TreeEngine
from decoder.llama_forward import LlamaTreeForward, unsupported_reason
from decoder.node_budget import CostCurve, NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.ragged_attention import _ragged_attention
from decoder.speculative import SpeculativeDecoder
from decoder.target_model import TargetModel
from decoder.tree_batch import pack, prefill_inputs, tree_mask
from tests.decoder.test_sampling import (
    CRITICAL_35,
    FixedTreeSource,
    chi_square,
    exact_pair_distribution,
    small_target,
)
from tests.decoder.test_sampling import (
    PROMPT as SAMPLING_PROMPT,
)
from tests.decoder.tiny_models import VOCAB, BatchOracle, OracleSource, plain_greedy, tiny_gpt2, tiny_llama, tree
from tests.extensions import assert_built

SHAPES = ["empty", "chain", "wide", "deep", "branchy", "long"]
LAYOUTS = ["ragged", "padded"]
PROMPT = [5, 9, 2, 33, 17, 8, 40, 1]
BATCH = [[5, 9, 2, 33, 17, 8, 40, 1], [3, 3, 3], [10, 20, 30, 40, 50, 60, 10, 20, 30, 40, 50], [7]]


@pytest.fixture(scope="module")
def llama() -> TargetModel:
    return tiny_llama()


def _laid_out(engine: TreeEngine, layout: str) -> TreeEngine:
    """The engine with ragged passes (real fed tokens only, where the kernel is built) or padded ones."""
    if layout == "ragged":
        assert_built(_ragged_attention, "decoder._ragged_attention")
        assert engine.ragged
    engine.ragged = layout == "ragged"
    return engine


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("max_new_tokens", [1, 7, 40])
def test_greedy_equals_generate_for_every_tree_shape(llama, shape: str, max_new_tokens: int, layout: str):
    reference = plain_greedy(llama, PROMPT, max_new_tokens)
    engine = _laid_out(TreeEngine(llama, OracleSource(len(PROMPT), reference, shape), NodeBudget(63)), layout)
    generation = engine.generate(PROMPT, max_new_tokens)
    assert generation.tokens == reference
    accepted = sum(step.accepted for step in generation.steps)
    if shape in ("chain", "long", "branchy") and max_new_tokens > 7:
        assert accepted > 0 and generation.mean_accepted_length > 1.5
    if shape == "empty":
        assert accepted == 0 and all(step.drafted == 0 for step in generation.steps)


def test_the_pass_gives_the_logits_of_a_plain_causal_pass_on_every_branch(llama):
    """One tree pass through the static cache == transformers' own forward along each branch."""
    forward = LlamaTreeForward(llama.model)
    cache = forward.new_cache(rows=1, capacity=128)
    draft = tree([10, 11, 12, 13, 14], [-1, 0, -1, 2, 1])
    with torch.inference_mode():
        prompt = prefill_inputs(PROMPT[:-1], torch.float32, torch.device("cpu"))
        forward(cache, prompt.input_ids, prompt.positions, prompt.slots, prompt.mask)
        cache.advance(0, len(PROMPT) - 1)
        fed = pack([PROMPT[-1]], [draft], cache.lengths, 8, 0, torch.float32, torch.device("cpu"))
        logits = forward(cache, fed.input_ids, fed.positions, fed.slots, fed.mask)[0]
        for node, _ in enumerate(fed.fed_tokens[0]):
            branch, i = [], node
            while i >= 0:
                branch.append(fed.fed_tokens[0][i])
                i = fed.fed_parents[0][i]
            causal = llama.model(input_ids=torch.tensor([PROMPT[:-1] + branch[::-1]])).logits[0, -1]
            assert torch.allclose(logits[node], causal, atol=1e-5), node


def test_eos_inside_a_draft_stops_like_generate(llama):
    free = plain_greedy(llama, PROMPT, 30)
    eos = free[12]
    llama.model.generation_config.eos_token_id = eos
    try:
        reference = plain_greedy(llama, PROMPT, 30)
        assert reference[-1] == eos and len(reference) <= 13
        engine = TreeEngine(llama, OracleSource(len(PROMPT), free, "long"), NodeBudget(63))
        generation = engine.generate(PROMPT, 30)
        assert generation.tokens == reference and generation.stopped_by == "eos"
    finally:
        llama.model.generation_config.eos_token_id = None


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("max_new_tokens", [1, 9, 30])
def test_a_batch_equals_each_sequence_alone(llama, max_new_tokens: int, layout: str):
    references = {tuple(p): plain_greedy(llama, p, max_new_tokens) for p in BATCH}
    for source in (BatchOracle(references), NoDrafts(), WithPromptLookup(NoDrafts())):
        engine = _laid_out(TreeEngine(llama, source, NodeBudget(15)), layout)
        generations = engine.generate_batch(BATCH, max_new_tokens)
        for prompt, generation in zip(BATCH, generations):
            assert generation.tokens == references[tuple(prompt)], (type(source).__name__, prompt)
    oracle = TreeEngine(llama, BatchOracle(references), NodeBudget(15)).generate_batch(BATCH, max_new_tokens)
    if max_new_tokens > 9:
        assert all(g.mean_accepted_length > 1.2 for g in oracle)
        assert len({len(g.steps) for g in oracle}) > 1  # the rows finished at different steps


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rows", [1, 2, 3])
def test_prompts_waiting_for_a_row_decode_as_each_sequence_alone(llama, rows: int, layout: str):
    """More prompts than rows: each finished sequence's row is taken by the next prompt (continuous
    batching), and every output still equals plain greedy decoding, EOS stops included."""
    prompts = BATCH + [p[::-1] for p in BATCH]  # 8 prompts of 1 to 11 tokens
    free = {tuple(p): plain_greedy(llama, p, 25) for p in prompts}
    llama.model.generation_config.eos_token_id = free[tuple(prompts[1])][4]  # some sequences stop early
    try:
        references = {tuple(p): plain_greedy(llama, p, 25) for p in prompts}
        for source in (BatchOracle(free), NoDrafts(), WithPromptLookup(NoDrafts())):
            engine = _laid_out(TreeEngine(llama, source, NodeBudget(15)), layout)
            generations = engine.generate_batch(prompts, 25, rows=rows)
            assert [g.tokens for g in generations] == [references[tuple(p)] for p in prompts], type(source).__name__
            assert all(g.prefill_seconds > 0 for g in generations)
        assert len({len(tokens) for tokens in references.values()}) > 1  # sequences finished at different steps
    finally:
        llama.model.generation_config.eos_token_id = None


def test_a_float32_residual_stream_changes_nothing_in_float32(llama):
    prompt = prefill_inputs(PROMPT, torch.float32, torch.device("cpu"))

    def logits(float32_residual: bool) -> torch.Tensor:
        forward = LlamaTreeForward(llama.model, float32_residual)
        with torch.inference_mode():
            return forward(forward.new_cache(1, 64), prompt.input_ids, prompt.positions, prompt.slots, prompt.mask)

    assert torch.equal(logits(True), logits(False))
    with pytest.raises(CrestError, match="static or compiled"):
        make_decoder(llama, NoDrafts(), engine="eager", float32_residual=True)


def test_a_prefill_for_its_last_token_gives_that_tokens_logits_and_the_same_cache(llama):
    prompt = prefill_inputs(PROMPT, torch.float32, torch.device("cpu"))
    forward = LlamaTreeForward(llama.model)
    caches = [forward.new_cache(1, 64) for _ in range(2)]
    with torch.inference_mode():
        whole = forward(caches[0], prompt.input_ids, prompt.positions, prompt.slots, prompt.mask)
        last = forward(caches[1], prompt.input_ids, prompt.positions, prompt.slots, prompt.mask, last_only=True)
    assert last.shape == (1, 1, whole.shape[-1])
    torch.testing.assert_close(last[0, 0], whole[0, -1], rtol=1e-5, atol=1e-5)  # products of 1 row or of all
    assert torch.equal(caches[0].keys, caches[1].keys) and torch.equal(caches[0].values, caches[1].values)


@pytest.mark.parametrize("length", [1, 63, 64, 65, 150])
def test_a_ragged_prefill_in_chunks_fills_the_cache_like_the_padded_one(llama, length: int):
    prompt = [(7 * i + 3) % VOCAB for i in range(length)]
    results = {}
    for layout in LAYOUTS:
        engine = TreeEngine(llama, NoDrafts(), NodeBudget(0))
        cache = engine._cache_for(2, 256)
        with torch.inference_mode():
            logits = _laid_out(engine, layout)._prefill(cache, prompt, 1)
        results[layout] = logits, cache.keys[:, 1, :, :length].clone(), cache.values[:, 1, :, :length].clone()
    assert results["ragged"][0].shape == results["padded"][0].shape == (1, 1, VOCAB)
    for ragged, padded in zip(results["ragged"], results["padded"]):  # float32 sums in another order
        torch.testing.assert_close(ragged, padded, rtol=1e-4, atol=1e-4)
    reference = plain_greedy(llama, prompt, 12)
    assert _laid_out(TreeEngine(llama, NoDrafts(), NodeBudget(0)), "ragged").generate(prompt, 12).tokens == reference


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_empty_prompt_is_refused_with_a_clear_error(llama, layout: str):
    engine = _laid_out(TreeEngine(llama, NoDrafts(), NodeBudget(0)), layout)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate_batch([PROMPT, []], 5)


def test_the_mask_built_on_the_device_is_the_mask_pack_lays_out():
    rng = np.random.default_rng(0)
    for _ in range(100):
        rows, width = int(rng.integers(1, 5)), int(rng.choice([1, 2, 4, 8, 16]))
        lengths = [int(rng.integers(0, 100)) for _ in range(rows)]
        drafts = []
        for _ in range(rows):
            nodes = int(rng.integers(0, width))
            drafts.append(tree(list(range(1, nodes + 1)), [int(rng.integers(-1, i)) for i in range(nodes)]))
        for dtype in (torch.float32, torch.bfloat16):
            laid_out = pack([3] * rows, drafts, lengths, width, 0, dtype, torch.device("cpu"), visible=128)
            bits = pack([3] * rows, drafts, lengths, width, 0, dtype, torch.device("cpu"), mask_on_device=True)
            assert bits.mask is None
            assert torch.equal(tree_mask(bits.starts, bits.sees, 128, dtype), laid_out.mask)
            assert torch.equal(bits.positions, laid_out.positions) and torch.equal(bits.slots, laid_out.slots)


def _compiled_layout(engine: TreeEngine) -> TreeEngine:
    """The compiled engine's passes without the graph capture (which needs a GPU): full-width passes
    over the whole cache, fillers computed, the mask built from starts and ancestry as inside a graph."""
    engine.compiled, engine.run_pass = True, GraphedPasses(engine.forward, capture=False)
    engine.ragged = False  # as the compiled engine's constructor decides: graphs replay padded passes
    return engine


@pytest.mark.parametrize("shape", SHAPES)
def test_the_compiled_engines_passes_equal_generate(llama, shape: str):
    reference = plain_greedy(llama, PROMPT, 30)
    engine = _compiled_layout(TreeEngine(llama, OracleSource(len(PROMPT), reference, shape), NodeBudget(63)))
    assert engine.generate(PROMPT, 30).tokens == reference
    references = {tuple(p): plain_greedy(llama, p, 20) for p in BATCH}
    batched = _compiled_layout(TreeEngine(llama, BatchOracle(references), NodeBudget(15)))
    assert [g.tokens for g in batched.generate_batch(BATCH, 20, rows=2)] == [references[tuple(p)] for p in BATCH]


def test_a_batch_row_that_meets_eos_stops_while_the_others_go_on(llama):
    free = {tuple(p): plain_greedy(llama, p, 20) for p in BATCH}
    eos = free[tuple(BATCH[0])][5]
    llama.model.generation_config.eos_token_id = eos
    try:
        references = {tuple(p): plain_greedy(llama, p, 20) for p in BATCH}
        generations = TreeEngine(llama, BatchOracle(free), NodeBudget(15)).generate_batch(BATCH, 20)
        for prompt, generation in zip(BATCH, generations):
            assert generation.tokens == references[tuple(prompt)]
        assert generations[0].stopped_by == "eos"
        assert any(len(g.tokens) > len(generations[0].tokens) for g in generations[1:])
    finally:
        llama.model.generation_config.eos_token_id = None


def test_one_engine_serves_generations_of_growing_size(llama):
    engine = TreeEngine(llama, WithPromptLookup(NoDrafts()), NodeBudget(7))
    for length in (5, 300):
        assert engine.generate(PROMPT, length).tokens == plain_greedy(llama, PROMPT, length)


def sample_pairs(target: TargetModel, params: SamplingParams, runs: int, rows: int) -> Counter:
    engine = TreeEngine(target, FixedTreeSource(), NodeBudget(8), sampling=params, seed=7)
    pairs: Counter = Counter()
    for _ in range(runs // rows):
        pairs.update(tuple(g.tokens) for g in engine.generate_batch([SAMPLING_PROMPT] * rows, 2))
    return pairs


@pytest.mark.parametrize("rows", [1, 4])
def test_batched_sampling_matches_the_target_distribution(rows: int):
    target = small_target()
    params = SamplingParams(temperature=1.0)
    expected = exact_pair_distribution(target, params)
    runs = 4000
    assert chi_square(sample_pairs(target, params, runs, rows), expected, runs) < CRITICAL_35


def test_sampling_with_top_p_and_top_k_stays_inside_the_filtered_support():
    target = small_target()
    params = SamplingParams(temperature=0.8, top_p=0.7, top_k=3)
    allowed = exact_pair_distribution(target, params) > 0
    for pair in sample_pairs(target, params, 400, rows=4):
        assert allowed[pair], pair


def test_calibration_learns_how_often_a_source_is_right():
    calibration = AcceptanceCalibration()
    stated = np.full(400, 0.55)
    calibration.observe(stated, np.arange(400) % 5 == 0, np.ones(400, np.int32))  # agrees 1 time in 5
    assert abs(float(calibration.calibrate(np.array([0.55]), np.array([1]))[0]) - 0.2) < 0.03
    ranked = calibration.calibrate(np.linspace(0.99, 0.01, 50), np.ones(50, np.int32))
    assert np.all(np.diff(ranked) <= 1e-12)  # still ranked: a child never outranks its parent


def test_calibration_tells_deep_nodes_from_shallow_ones_stated_alike():
    """A chain whose every node is stated 1.0 (prompt lookup where all matches agree): the target
    follows its first node 4 times in 5 and its fourth once in 5; calibration tells them apart, and a
    deeper node never comes out above a shallower one stated as high."""
    calibration = AcceptanceCalibration()
    depths = np.repeat(np.arange(1, 5, dtype=np.int32), 200)
    chains = np.tile(np.arange(200), 4)
    followed = np.where(depths == 1, chains % 5 != 0, np.where(depths == 4, chains % 5 == 0, chains % 2 == 0))
    calibration.observe(np.ones(800), followed, depths)
    first, fourth = calibration.calibrate(np.ones(2), np.array([1, 4]))
    # (the fourth is pooled with the empty bins just below it, whose prior is the source's overall trust)
    assert abs(first - 0.8) < 0.03 and 0.2 <= fourth < 0.3
    everywhere = calibration.calibrate(np.full(8, 0.5), np.arange(1, 9))
    assert np.all(np.diff(everywhere) <= 1e-12)


def test_a_cost_curve_is_timed_in_turns_and_kept_as_its_lower_envelope():
    calls: list[int | str] = []
    noise = {2: 0.050}  # one slowed count: a burst of other work, or a noisy neighbour

    def time_pass(tokens: int) -> float:
        calls.append(tokens)
        slowed = noise.get(tokens, 0.0) if calls.count(tokens) % 2 == 0 else 0.0
        return 0.010 + 0.001 * tokens + slowed + (0.004 if tokens == 4 else 0.0)  # 4 always slow

    def time_fillers() -> float:
        calls.append("fillers")
        return 0.0001

    curve = CostCurve.measure_with("test-curve", time_pass, [1, 2, 4, 8], time_fillers, repeats=3)
    assert calls[:5] == [1, 2, 4, 8, "fillers"] and calls[5:10] == calls[:5]  # warm-ups, then rounds
    assert len(calls) == 5 * 4
    # 2: the fastest of its turns; 4 timed above 8 is noise: it costs no more than 8
    np.testing.assert_allclose(curve.seconds, [0.011, 0.012, 0.018, 0.018])
    assert curve.filler_seconds == pytest.approx(0.0001)
    calls.clear()
    assert CostCurve.measure_with("test-curve", time_pass, [1, 2, 4, 8], time_fillers) == curve and not calls


def test_the_budget_drafts_nothing_when_no_width_pays():
    steep = CostCurve([1, 2, 4, 8], [0.040, 0.080, 0.090, 0.100])  # a second fed token doubles the cost
    budget = NodeBudget(7, steep)
    unsure = [np.array([0.6, 0.3, 0.2])]
    assert budget.plan_width(unsure) == 1  # 1.6 tokens for 2x the cost: no
    sure = [np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.9])]
    assert budget.plan_width(sure) == 8  # 7.6 tokens for 2.5x the cost: yes
    flat = NodeBudget(7, CostCurve([1, 2, 4, 8], [0.040, 0.041, 0.042, 0.043]))
    assert flat.plan_width(unsure) == 4


def test_each_row_keeps_the_nodes_that_pay_for_themselves_across_the_batch():
    """Against every choice of per-row counts, fillers priced: the plan's expected tokens per second is the best."""
    curve = CostCurve([1, 2, 4, 8, 16, 32], [0.020, 0.021, 0.022, 0.025, 0.030, 0.045], filler_seconds=0.0002)
    budget = NodeBudget(7, curve)
    rng = np.random.default_rng(3)

    def rate(gains, choice):
        width = budget.width_for(1 + max(choice))
        fillers = len(gains) * (width - 1) - sum(choice)
        expected = sum(1 + float(g[:k].sum()) for g, k in zip(gains, choice))
        return expected / (float(curve.cost(len(gains) + sum(choice))) + curve.filler_seconds * fillers)

    for _ in range(30):
        rows = int(rng.integers(1, 4))
        gains = [np.sort(rng.random(rng.integers(0, 6)))[::-1] * rng.random() for _ in range(rows)]
        counts = budget.plan_counts(gains, fillers_cost=False)
        choices = itertools.product(*[range(len(g) + 1) for g in gains])
        assert rate(gains, counts) == pytest.approx(max(rate(gains, c) for c in choices), rel=1e-12)
        assert all(0 <= k <= len(g) for g, k in zip(gains, counts))
    sure, unsure = np.array([0.95, 0.9, 0.9]), np.array([0.05, 0.01])
    assert budget.plan_counts([sure, unsure], fillers_cost=False) == [3, 0]  # rows no longer share their count
    assert budget.plan_counts([sure, unsure], fillers_cost=True) == [3, 2]  # a graph's rows still do


def test_a_source_the_target_never_follows_ends_up_drafting_nothing(llama):
    """A confident but always-wrong source: calibration learns it, and the budget stops verifying it."""

    reference = plain_greedy(llama, PROMPT, 60)
    never = [token for token in range(64) if token not in reference][:3]

    class WrongSource:
        max_context = 10_000

        def drafts(self, contexts, max_nodes):
            return [tree(never, [-1, 0, 1]) for _ in contexts]

    steep = CostCurve([1, 2, 4, 8], [0.040, 0.060, 0.065, 0.070])
    engine = TreeEngine(llama, WrongSource(), NodeBudget(7, steep))
    generation = engine.generate(PROMPT, 60)
    assert generation.tokens == reference
    assert generation.steps[0].drafted > 0 and all(step.drafted == 0 for step in generation.steps[-20:])


def test_models_outside_the_llama_family_fall_back_to_the_eager_loop():
    gpt2 = tiny_gpt2()
    assert unsupported_reason(gpt2.model) is not None
    assert resolve_engine(gpt2, "auto") == "eager"
    assert isinstance(make_decoder(gpt2, NoDrafts(), measure_costs=False), SpeculativeDecoder)
    with pytest.raises(CrestError, match="does not support"):
        resolve_engine(gpt2, "static")
    with pytest.raises(ValueError):
        LlamaTreeForward(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16)))


def test_auto_picks_the_static_engine_for_llama_on_a_cpu(llama):
    assert resolve_engine(llama, "auto") == "static"
    assert isinstance(make_decoder(llama, NoDrafts(), measure_costs=False), TreeEngine)
    with pytest.raises(CrestError, match="needs --device cuda"):
        resolve_engine(llama, "compiled")


def test_a_slow_source_that_does_not_pay_is_asked_less_and_less(llama):
    """Lookups that cost more than their drafts bring: the gate skips them, for longer and longer."""
    reference = plain_greedy(llama, PROMPT, 120)

    class SlowUselessSource:
        max_context = 10_000
        calls = 0

        def drafts(self, contexts, max_nodes):
            SlowUselessSource.calls += 1
            time.sleep(0.02)
            return [DraftTree.empty() for _ in contexts]

    engine = TreeEngine(
        llama, SlowUselessSource(), NodeBudget(7, CostCurve([1, 2, 4, 8], [0.002, 0.003, 0.004, 0.005]))
    )
    generation = engine.generate(PROMPT, 120)
    assert generation.tokens == reference
    assert SlowUselessSource.calls < len(generation.steps) / 3, (SlowUselessSource.calls, len(generation.steps))
    asked = [step.lookup_seconds > 0.01 for step in generation.steps]
    assert any(not before and now for before, now in zip(asked, asked[1:]))  # it asks again, in case it pays


def test_the_gate_keeps_asking_a_source_that_pays():
    gate = DraftGate(judging=True)
    for _ in range(50):
        assert gate.should_draft()
        gate.record(drafted=True, tokens_per_sequence=2.5, seconds=0.025, plain_seconds=0.02)  # 100 tokens/s vs 50


def test_one_lucky_look_neither_keeps_the_gate_open_nor_restarts_its_backoff():
    """A source that rarely pays (a 1-node draft accepted now and then): one accepted look after a
    skip must not hold the gate open through the failing looks after it, nor shorten the next wait;
    looks that pay over a whole trial do."""

    def look(gate: DraftGate, gain: float) -> None:
        assert gate.should_draft()
        gate.record(True, gain, seconds=0.010, plain_seconds=0.010)

    gate = DraftGate(judging=True)
    for _ in range(4):
        look(gate, 0.7)
    assert (gate.skip, gate.wait) == (1, 2)  # the first trial closed it
    assert not gate.should_draft()
    look(gate, 1.35)  # accepted: open
    look(gate, 0.7)
    assert gate.skip == 0  # the mean of the trial (1.03) still pays
    look(gate, 0.7)
    assert (gate.skip, gate.wait) == (2, 4)  # the mean fell below 1: closed, the backoff doubled on
    while not gate.should_draft():
        pass
    for _ in range(4):
        gate.record(True, 1.3, seconds=0.010, plain_seconds=0.010)
        assert gate.should_draft()
    assert gate.wait == 1  # a trial that paid: the next disappointment waits one step again


def test_the_gate_judges_drafting_against_a_plain_step_of_the_same_moment():
    """A machine that slows down halfway (its passes take twice as long) must not make drafting that
    pays look as if it did not, nor drafting that does not pay look as if it did."""
    paying, losing = DraftGate(judging=True), DraftGate(judging=True)
    for step in range(40):
        slow = 2.0 if step >= 20 else 1.0
        for gate, tokens in ((paying, 1.3), (losing, 1.05)):
            if gate.should_draft():  # the drafting pass costs 1.2x a plain one, whatever the speed
                gate.record(True, tokens, seconds=0.012 * slow, plain_seconds=0.010 * slow)
    assert paying.skip == 0 and paying.gain > 1.0
    assert losing.wait > 1  # it closed, and after looking again closed again
