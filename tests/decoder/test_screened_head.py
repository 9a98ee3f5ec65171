"""The screened head (decoder/screened_head_kernel.c): each row's token is the argmax of its float32
logits by torch.argmax's rule, also where the bfloat16 copy ranks the tokens otherwise, on near ties,
exact ties, padded vocabularies, subnormal weights and rows, rows that are not finite, and calls of
few rows and many; heads it does not take are refused; the engine's greedy passes go through it; and
each instruction set's code this CPU runs (AVX512-BF16's pair products, AVX-512, AVX2) answers the same."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from decoder.draft_sources import NoDrafts
from decoder.engine import TreeEngine
from decoder.node_budget import NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.screened_head import ScreenedHead, _screened_head
from decoder.target_model import load_target
from tests.decoder.tiny_models import plain_greedy, tiny_llama
from tests.extensions import needs

pytestmark = [
    needs(_screened_head, "decoder._screened_head"),
    pytest.mark.skipif(_screened_head is not None and not _screened_head.available(), reason="this CPU lacks AVX-512"),
]


def linear(weight: torch.Tensor) -> nn.Linear:
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight.data = weight.contiguous()
    return head


def float32_argmax(weight: torch.Tensor, hidden: torch.Tensor) -> list[int]:
    """torch.argmax of each row's float32 logits, one dot product at a time (no blocked product's order)."""
    return [int(torch.argmax((weight * row).sum(dim=1))) for row in hidden]


def bfloat16_argmax(weight: torch.Tensor, hidden: torch.Tensor) -> list[int]:
    rounded, halves = weight.bfloat16().double(), hidden.bfloat16().double()
    return (halves @ rounded.T).argmax(dim=1).tolist()


def clear_winners(weight: torch.Tensor, hidden: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
    """Rows whose top two float64 logits differ by more than float32 rounding could close."""
    top = (hidden.double() @ weight.double().T).topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]) > margin * top[:, 0].abs().clamp(min=1.0)


@pytest.mark.parametrize("vocab, dim", [(64, 16), (1000, 64), (37, 32), (4099, 128)])
def test_tokens_are_the_float32_argmax_even_where_bfloat16_ranks_otherwise(vocab: int, dim: int):
    generator = torch.Generator().manual_seed(vocab)
    weight = torch.randn(vocab, dim, generator=generator)
    # Tokens in pairs of nearly the same weights, and rows close to one of a pair: near ties, whose
    # order bfloat16 rounding often reverses, yet clear in float32.
    weight[1::2] = weight[0 : vocab - 1 : 2] + torch.randn(vocab // 2, dim, generator=generator) * 0.01
    anchors = weight[torch.randint(0, vocab, (400,), generator=generator)]
    hidden = anchors * 3 + torch.randn(400, dim, generator=generator) * 0.05
    clear = clear_winners(weight, hidden)
    screen = ScreenedHead.of(linear(weight))
    want = float32_argmax(weight, hidden)
    for rows in (5, 40):  # one block of rows a call, and several (the kernel's blocks hold up to 12)
        got = [token for i in range(0, len(hidden), rows) for token in screen.tokens(hidden[i : i + rows])]
        assert [g for g, c in zip(got, clear) if c] == [w for w, c in zip(want, clear) if c]
    reordered = [a != w for a, w, c in zip(bfloat16_argmax(weight, hidden), want, clear) if c]
    assert sum(reordered) >= 5  # the test has teeth: bfloat16 alone would have answered these wrongly


def test_rows_rounded_to_bfloat16_are_bounded_too():
    """Weights exact in bfloat16, a row whose values all lie just beside a rounding midpoint: token 0
    reads dimensions that round down, token 1 dimensions that round up, so rounding the row (as the
    pair products do) puts token 1 far ahead, 0.12, where float32 has token 0 ahead by 0.004."""
    below, above = 1 + 2**-8 - 1e-5, 1 + 2**-8 + 1e-5  # bfloat16 rounds them to 1 and to 1 + 2^-7
    hidden = torch.tensor([[below] * 16 + [above] * 16])
    weight = torch.zeros(2, 32)
    weight[0, :16] = 1.0
    weight[1, 16:] = 1.0
    weight[1, 31] = 1 - 2**-8
    assert float32_argmax(weight, hidden) == [0] and bfloat16_argmax(weight, hidden) == [1]
    assert ScreenedHead.of(linear(weight)).tokens(hidden) == [0]


def test_exact_ties_go_to_the_first_token_and_padding_is_never_chosen():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(37, 32, generator=generator)  # 37 tokens: the kernel pads to 48 with zero rows
    weight[20] = weight[9]  # two tokens with the very same logits
    hidden = torch.stack([weight[9] * 2, -weight.abs().sum(dim=0)])  # the second: every logit below 0
    screen = ScreenedHead.of(linear(weight))
    tokens = screen.tokens(hidden)
    assert tokens[0] == 9
    assert tokens[1] == float32_argmax(weight, hidden[1:])[0] < 37


def test_the_padding_never_sets_the_bar_the_vocabulary_must_reach():
    """Every logit below 0, the padded tokens' approximate 0 would rule out the most likely token (small
    weights, a tight bound) and keep a less likely one (large weights, a loose bound)."""
    weight = torch.zeros(17, 16)  # padded to 32 tokens
    weight[:, 0] = -1.0
    weight[3, 0] = -0.01  # the argmax, known closely
    weight[11, 0], weight[11, 1] = -0.5, 1000.0  # far less likely, but known only to within ~1
    hidden = torch.zeros(1, 16)
    hidden[0, 0] = 1.0
    assert ScreenedHead.of(linear(weight)).tokens(hidden) == [3]


def test_subnormal_weights_and_rows_are_bounded_as_the_kernel_reads_them():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(64, 16, generator=generator) * 1e-39  # subnormal in float32 and in bfloat16
    weight[:, 0] = torch.linspace(-1.0, 1.0, 64)
    hidden = torch.randn(50, 16, generator=generator) * 1e3
    hidden[:, 0] = 1e-30
    # Rows that only subnormal values tell apart (the pair products read them as zero).
    weight[:, 1] = torch.linspace(1.0, 2.0, 64).flip(0)
    hidden[40:] = 0.0
    hidden[40:, 1] = torch.linspace(1e-39, 1e-38, 10)
    screen = ScreenedHead.of(linear(weight))
    assert screen.tokens(hidden) == float32_argmax(weight, hidden)
    assert screen.tokens(hidden)[40:] == [0] * 10


def test_rows_that_are_not_finite_follow_torch_argmax():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(100, 32, generator=generator)
    weight[7, 4] = 0.0  # inf x 0: this token's logit is NaN where the row holds an infinity there
    hidden = torch.randn(4, 32, generator=generator)
    hidden[0, 4] = float("inf")
    hidden[1, 2] = float("nan")
    hidden[2] *= 1e31  # finite, but past where the bound is computed: every token in float32
    screen = ScreenedHead.of(linear(weight))
    logits = hidden @ weight.T
    assert screen.tokens(hidden) == logits.argmax(dim=1).tolist()


def test_heads_the_kernel_does_not_take_are_refused():
    assert ScreenedHead.of(nn.Linear(24, 50, bias=False)) is None  # a dimension not a multiple of 16
    assert ScreenedHead.of(nn.Linear(32, 50, bias=True)) is None
    assert ScreenedHead.of(nn.Linear(32, 50, bias=False).double()) is None
    assert ScreenedHead.of(nn.Identity()) is None
    broken = nn.Linear(32, 50, bias=False)
    broken.weight.data[3, 3] = float("nan")
    assert ScreenedHead.of(broken) is None
    screen = ScreenedHead.of(nn.Linear(32, 50, bias=False))
    with pytest.raises(ValueError, match="float32 hidden states"):
        screen.tokens(torch.zeros(2, 16))


def test_smollm2_hidden_states_give_generate_s_tokens():
    """Real final hidden states (after the norm) of SmolLM2 on real text, against its own head."""
    target = load_target("smollm2")
    ids = torch.tensor([target.encode_prompt("def fibonacci(n):\n    if n < 2:\n        return n\n", False)])
    with torch.inference_mode():
        hidden = target.model.model(ids).last_hidden_state[0]
        logits = target.model.lm_head(hidden)
    screen = ScreenedHead.of(target.model.lm_head)
    assert screen is not None
    assert screen.tokens(hidden) == logits.argmax(dim=1).tolist()


def test_the_engine_s_greedy_passes_read_the_screened_head():
    target = tiny_llama()
    engine = TreeEngine(target, WithPromptLookup(NoDrafts()), NodeBudget(8))
    assert engine.greedy_passes and engine.forward.screened_head is not None
    calls = []
    tokens = engine.forward.screened_head.tokens
    engine.forward.screened_head.tokens = lambda hidden: calls.append(len(hidden)) or tokens(hidden)
    prompt = [5, 9, 2, 33, 17, 8, 40, 1, 5, 9, 2]
    assert engine.generate(prompt, 24).tokens == plain_greedy(target, prompt, 24)
    assert calls and max(calls) <= engine.forward.screened_head.most_rows


@pytest.mark.parametrize("instruction_set", ["avx512bf16", "avx512", "avx2"])
def test_each_instruction_set_s_code_gives_the_same_tokens(instruction_set: str):
    """The tests above with each other set's code this CPU runs (CREST_HEAD_ISA), which it would
    otherwise never run: AVX-512 widens bfloat16 weights and multiplies float32 rows, AVX2 sums a
    tile in two halves with one sum per row, AVX512-BF16 rounds the rows and multiplies pairs."""
    if _screened_head.instruction_set() == instruction_set:
        pytest.skip(f"{instruction_set} is what runs here: the tests above ran it")
    environment = {**os.environ, "CREST_HEAD_ISA": instruction_set}
    check = f"from decoder import _screened_head; assert _screened_head.instruction_set() == {instruction_set!r}"
    if subprocess.run([sys.executable, "-c", check], env=environment, capture_output=True).returncode != 0:
        pytest.skip(f"this CPU does not run the {instruction_set} code")
    tests = [
        f"{__file__}::{name}"
        for name in (
            "test_tokens_are_the_float32_argmax_even_where_bfloat16_ranks_otherwise",
            "test_rows_rounded_to_bfloat16_are_bounded_too",
            "test_exact_ties_go_to_the_first_token_and_padding_is_never_chosen",
            "test_the_padding_never_sets_the_bar_the_vocabulary_must_reach",
            "test_subnormal_weights_and_rows_are_bounded_as_the_kernel_reads_them",
            "test_rows_that_are_not_finite_follow_torch_argmax",
        )
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env=environment, capture_output=True
    )
    assert done.returncode == 0, done.stdout.decode()[-2000:]
    assert b"9 passed" in done.stdout  # (the near-tie test is 4 cases)
