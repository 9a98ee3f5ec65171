"""`crest demo`: the whole system on this machine, start to finish.

Builds the default code datastore (stdlib, SmolLM2's tokenizer) unless it is cached, serves it
from a `crest serve` child process on a free loopback port, decodes a few HumanEval and MT-Bench
prompts through the service (drafts accepted by the model are shown in green), decodes the same
prompts without drafts, and ends with a table. The server is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys

from rich.console import Console
from rich.table import Table

from crest_cli.benchmark_prompts import humaneval_prompts, mtbench_questions
from crest_cli.generate import stream_to_terminal
from crest_cli.server_process import ServerProcess
from datastore_service.build.corpus import stdlib_corpus
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store, default_store_path
from datastore_service.serve.client import DraftClient
from datastore_service.sizes import format_bytes
from datastore_service.store.reader import resolve_store
from decoder.draft_sources import NoDrafts, ServiceSource, TimedSource
from decoder.node_budget import CostCurve, NodeBudget
from decoder.prompt_lookup import WithPromptLookup
from decoder.speculative import SpeculativeDecoder
from decoder.target_model import load_target

MODEL = "smollm2"


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    store = default_store_path("stdlib")
    if not store.exists():
        console.print(f"[bold]Building the default code datastore[/] (first run only) into {store}")
        build_store(stdlib_corpus(), MODEL, store, BuildParams())
    # A SIGTERM must also stop the server: turn it into the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ServerProcess(store) as server:
            console.print(f"[bold]Serving[/] {store} on {server.address}; loading {MODEL}")
            return _decode_through(server.address, store, args, console)
    except KeyboardInterrupt:
        console.print("demo interrupted; the server was stopped")
        return 130


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _decode_through(address: str, store, args: argparse.Namespace, console: Console) -> int:
    target = load_target(MODEL)
    with DraftClient(address) as client:
        client.check_tokenizer(target.tokenizer_fingerprint)
        lookups = TimedSource(ServiceSource(client))
        drafted = SpeculativeDecoder(target, WithPromptLookup(lookups), NodeBudget(32, CostCurve.measure(target)))
        plain = SpeculativeDecoder(target, NoDrafts(), NodeBudget(0))
        prompts = [(f"HumanEval {i}", text, False) for i, text in enumerate(humaneval_prompts(args.humaneval))]
        prompts += [(f"MT-Bench {i}", text, True) for i, text in enumerate(mtbench_questions(args.mtbench))]
        table = Table(title="Speculative decoding through the datastore service vs plain greedy decoding")
        for column in (
            "prompt",
            "tokens",
            "accepted tokens/step",
            "tokens/s drafted",
            "tokens/s plain",
            "speedup",
            "same output",
        ):
            table.add_column(column, justify="left" if column == "prompt" else "right")
        for title, text, chat in prompts:
            console.rule(title)
            ids = target.encode_prompt(text, chat)
            print(text if not chat else f"[chat] {text}", flush=True)
            generation = stream_to_terminal(
                drafted, target, ids, args.max_new_tokens, [], color=not args.no_color and sys.stdout.isatty()
            )
            reference = plain.generate(ids, args.max_new_tokens)
            table.add_row(
                title,
                str(len(generation.tokens)),
                f"{generation.mean_accepted_length:.2f}",
                f"{generation.tokens_per_second:.1f}",
                f"{reference.tokens_per_second:.1f}",
                f"{generation.tokens_per_second / max(reference.tokens_per_second, 1e-9):.2f}x",
                "yes" if generation.tokens == reference.tokens else "NO",
            )
    console.print(table)
    latency = statistics.median(lookups.seconds) * 1e3 if lookups.seconds else 0.0
    console.print(
        f"datastore {format_bytes(resolve_store(store).stat().st_size)} ({store}); "
        f"lookup round trip p50 {latency:.2f} ms over {len(lookups.seconds)} lookups"
    )
    return 0
