"""`crest generate`: stream a completion with drafts from a store or a server, then report."""

from __future__ import annotations

import argparse
import sys
import time

from crest_cli.generate_metrics import DecodeMetrics
from datastore_service.build.tokenizer import TargetTokenizer
from datastore_service.draft import DEFAULT_SELECTION
from datastore_service.errors import CrestError
from decoder.acceptance import SamplingParams
from decoder.decoders import Decoder, make_decoder
from decoder.draft_sources import DraftSource, IndexSource, NoDrafts, ServiceSource
from decoder.prompt_lookup import WithPromptLookup
from decoder.speculative import Generation
from decoder.target_model import TargetModel, load_target

ACCEPTED_STYLE, RESET = "\033[32m", "\033[0m"


def draft_source(args: argparse.Namespace, tokenizer_fingerprint: str | None) -> DraftSource:
    """The source the flags ask for, checked before the model loads (it takes seconds): the store opens
    or the server answers and accepts the token, and either was built with the model's tokenizer."""
    if args.learn and not args.server:
        raise CrestError("--learn sends outputs to a draft server: use it with --server")
    if args.no_store:
        if args.no_prompt_lookup:
            raise CrestError("--no-store with --no-prompt-lookup leaves nothing to draft from (use --compare)")
        return WithPromptLookup(NoDrafts())
    if args.server:
        from datastore_service.serve.client import DraftClient
        from datastore_service.serve.credentials import ClientSecurity, load_token

        client = DraftClient(
            args.server,
            security=ClientSecurity(
                tls_ca=args.tls_ca,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                server_name=args.tls_server_name,
                token=load_token(args.token_file),
            ),
            store=args.store_name,
        )
        client.check_tokenizer(tokenizer_fingerprint)
        source: DraftSource = ServiceSource(client, args.selection)  # None: the server's default
    else:
        from datastore_service.lookup.index_loader import load_index

        index = load_index(args.store)
        if index.info.tokenizer_fingerprint != tokenizer_fingerprint:
            raise CrestError(
                f"store {args.store} was built for tokenizer {index.info.tokenizer_name!r}, "
                f"not the one of model {args.model!r}"
            )
        source = IndexSource(index, args.selection or DEFAULT_SELECTION)
    return source if args.no_prompt_lookup else WithPromptLookup(source)


def stream_to_terminal(
    decoder: Decoder,
    target: TargetModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    stop: list[str],
    color: bool,
    metrics: DecodeMetrics | None = None,
) -> Generation:
    """Print the completion as it is verified, accepted draft tokens in green when `color`."""
    tokenizer, shown, tokens = target.tokenizer, "", []
    stream = decoder.stream(prompt_ids, max_new_tokens, stop)
    started = time.perf_counter()
    while True:
        try:
            emitted = next(stream)
        except StopIteration as done:
            print(flush=True)
            return done.value
        if metrics is not None:
            now = time.perf_counter()
            metrics.step(len(emitted), now - started)
            started = now
        accepted_drafts = len(emitted) - 1  # every emitted token but the last was drafted
        tokens.extend(emitted)
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        new = text[len(shown) :]
        if color and accepted_drafts > 0:
            accepted_text = tokenizer.decode(tokens[:-1], skip_special_tokens=False)[len(shown) :]
            new = ACCEPTED_STYLE + accepted_text + RESET + text[len(shown) + len(accepted_text) :]
        sys.stdout.write(new)
        sys.stdout.flush()
        shown = text


def learn_from(source: DraftSource, tokens: list[int]) -> int:
    """After a generation: send its tokens to the draft server, so later lookups draft them."""
    inner = source.source if isinstance(source, WithPromptLookup) else source
    if not isinstance(inner, ServiceSource):
        raise CrestError("--learn sends outputs to a draft server: use it with --server")
    return inner.client.observe([tokens]) if tokens else 0


def _report(name: str, generations: list[Generation], seconds: float) -> str:
    tokens = sum(len(generation.tokens) for generation in generations)
    forwards = sum(len(generation.steps) + 1 for generation in generations)
    rows = f" in {len(generations)} sequences" if len(generations) > 1 else ""
    return (
        f"{name:>10}: {tokens} tokens{rows}, {forwards} steps, {tokens / forwards:.2f} tokens/step, "
        f"{tokens / max(seconds, 1e-9):.1f} tokens/s"
    )


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CrestError("--batch-size must be at least 1")
    # Before the model: a wrong server, token or store fails in a second, not after the model loaded.
    fingerprint = None if args.no_store else TargetTokenizer.load(args.model).fingerprint
    source = draft_source(args, fingerprint)
    target = load_target(args.model, args.dtype, args.device)
    prompts = [target.encode_prompt(prompt, args.chat) for prompt in args.prompt]
    empty = next((i for i, ids in enumerate(prompts) if not ids), None)
    if empty is not None:
        raise CrestError(f"--prompt number {empty + 1} is empty: give the text to continue")
    if len(prompts) == 1 and args.batch_size > 1:
        prompts *= args.batch_size
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k) if args.temperature > 0 else None
    rows = min(args.batch_size, len(prompts))
    settings = dict(
        sampling=sampling,
        engine=args.engine,
        rows=rows,
        measure_costs=not args.fixed_nodes,
        float32_residual=args.float32_residual,
    )
    decoder = make_decoder(target, source, args.max_nodes, **settings)
    started = time.perf_counter()
    if rows > 1:
        generations = _decode_batches(decoder, prompts, rows, args)
        for number, generation in enumerate(generations, start=1):
            print(f"--- {number} ---")
            print(target.tokenizer.decode(generation.tokens, skip_special_tokens=False), flush=True)
    else:
        generations = [_stream_one(decoder, target, prompts[0], args)]
    seconds = time.perf_counter() - started
    lines = [_report("drafted", generations, seconds)]
    if args.learn:
        learned = sum(learn_from(source, generation.tokens) for generation in generations)
        lines.append(f"   learned: the server took {learned} tokens of this output")
    if args.compare:
        started = time.perf_counter()
        plain = _decode_batches(make_decoder(target, NoDrafts(), 0, **settings), prompts, rows, args)
        plain_seconds = time.perf_counter() - started
        lines.append(_report("plain", plain, plain_seconds))
        identical = all(a.tokens == b.tokens for a, b in zip(generations, plain))
        lines.append(
            f"   speedup: {plain_seconds / max(seconds, 1e-9):.2f}x"
            + ("" if sampling else f", identical output: {identical}")
        )
    print("\n".join(lines), file=sys.stderr)
    return 0


def _stream_one(decoder: Decoder, target: TargetModel, prompt: list[int], args: argparse.Namespace) -> Generation:
    metrics = DecodeMetrics("127.0.0.1", args.metrics_port) if args.metrics_port is not None else None
    try:
        color = args.color or sys.stdout.isatty()
        return stream_to_terminal(decoder, target, prompt, args.max_new_tokens, args.stop, color, metrics)
    finally:
        if metrics is not None:
            metrics.close()


def _decode_batches(
    decoder: Decoder, prompts: list[list[int]], rows: int, args: argparse.Namespace
) -> list[Generation]:
    """Decode the prompts `rows` at a time, each waiting one taking the row of the first to finish."""
    return decoder.generate_batch(prompts, args.max_new_tokens, args.stop, rows=rows)
