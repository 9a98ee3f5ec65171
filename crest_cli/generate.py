"""`crest generate`: stream a completion with drafts from a store or a server, then report."""

from __future__ import annotations

import argparse
import sys

from datastore_service.errors import CrestError
from decoder.acceptance import SamplingParams
from decoder.draft_sources import DraftSource, IndexSource, NoDrafts, ServiceSource
from decoder.node_budget import CostCurve, NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.speculative import Generation, SpeculativeDecoder
from decoder.target_model import TargetModel, load_target

ACCEPTED_STYLE, RESET = "\033[32m", "\033[0m"


def draft_source(args: argparse.Namespace, target: TargetModel) -> DraftSource:
    """The source the flags ask for, refusing a store built for another tokenizer than the model's."""
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
        )
        client.check_tokenizer(target.tokenizer_fingerprint)
        source: DraftSource = ServiceSource(client, args.selection)
    elif args.store:
        from datastore_service.lookup.index_loader import load_index

        index = load_index(args.store)
        if index.info.tokenizer_fingerprint != target.tokenizer_fingerprint:
            raise CrestError(
                f"store {args.store} was built for tokenizer {index.info.tokenizer_name!r}, "
                f"not the one of model {target.name!r}"
            )
        source = IndexSource(index, args.selection)
    else:
        source = NoDrafts()
    return source if args.no_prompt_lookup else WithPromptLookup(source)


def stream_to_terminal(
    decoder: SpeculativeDecoder,
    target: TargetModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    stop: list[str],
    color: bool,
) -> Generation:
    """Print the completion as it is verified, accepted draft tokens in green when `color`."""
    tokenizer, shown, tokens = target.tokenizer, "", []
    stream = decoder.stream(prompt_ids, max_new_tokens, stop)
    while True:
        try:
            emitted = next(stream)
        except StopIteration as done:
            print(flush=True)
            return done.value
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


def _report(name: str, generation: Generation) -> str:
    return (
        f"{name:>10}: {len(generation.tokens)} tokens, {len(generation.steps) + 1} steps, "
        f"{generation.mean_accepted_length:.2f} tokens/step, {generation.tokens_per_second:.1f} tokens/s"
    )


def run(args: argparse.Namespace) -> int:
    target = load_target(args.model, args.dtype, args.device)
    prompt_ids = target.encode_prompt(args.prompt, args.chat)
    sampling = SamplingParams(args.temperature, args.top_p) if args.temperature > 0 else None
    curve = None if args.fixed_nodes else CostCurve.measure(target)
    decoder = SpeculativeDecoder(target, draft_source(args, target), NodeBudget(args.max_nodes, curve), sampling)
    generation = stream_to_terminal(
        decoder, target, prompt_ids, args.max_new_tokens, args.stop, args.color or sys.stdout.isatty()
    )
    lines = [_report("drafted", generation)]
    if args.compare:
        plain = SpeculativeDecoder(target, NoDrafts(), NodeBudget(0), sampling).generate(
            prompt_ids, args.max_new_tokens, args.stop
        )
        lines.append(_report("plain", plain))
        lines.append(
            f"   speedup: {generation.tokens_per_second / max(plain.tokens_per_second, 1e-9):.2f}x"
            + ("" if sampling else f", identical output: {plain.tokens == generation.tokens}")
        )
    print("\n".join(lines), file=sys.stderr)
    return 0
