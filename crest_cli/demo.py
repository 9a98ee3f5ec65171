"""`crest demo`: the whole system on this machine, start to finish.

Builds the default code store (Python stdlib) and chat store (ShareGPT) with SmolLM2's tokenizer
unless they are cached, serves both from one `crest serve` child process on a free loopback port
(the chat store by name), and decodes a few HumanEval prompts through the code store and MT-Bench
questions through the chat store. Each prompt is decoded four ways by the same engine: plain (no
drafts), the store alone, prompt lookup alone, and both; the last is shown as it is generated, the
tokens it accepted from drafts in green. Then every configuration decodes the prompt once a round for
ROUNDS rounds, in an order rotated by one each round, and the table shows each one's median ratio to
plain decoding within a round. The server is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crest_cli.benchmark_prompts import humaneval_prompts, mtbench_questions
from crest_cli.generate import stream_to_terminal
from crest_cli.server_process import ServerProcess
from datastore_service.build.corpus import corpus_spec
from datastore_service.build.params import BuildParams
from datastore_service.build.pipeline import build_store, default_store_path
from datastore_service.serve.client import DraftClient
from datastore_service.sizes import format_bytes
from datastore_service.store.reader import resolve_store
from decoder.decoders import Decoder, make_decoder
from decoder.draft_sources import DraftSource, NoDrafts, ServiceSource, TimedSource
from decoder.prompt_lookup import WithPromptLookup
from decoder.speculative import Generation
from decoder.target_model import TargetModel, load_target

MODEL = "smollm2"
STORES = {"code": "stdlib", "chat": "sharegpt"}  # store name on the server -> corpus preset it is built from
CONFIGURATIONS = ("store", "lookup", "both")
ROUNDS = 3  # the table shows each configuration's median ratio to plain decoding within a round


@dataclass(frozen=True)
class DemoPrompt:
    title: str
    text: str
    chat: bool

    @property
    def store(self) -> str:
        return "chat" if self.chat else "code"


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    paths = {name: default_store_path(corpus) for name, corpus in STORES.items()}
    for name, path in paths.items():
        if not path.exists():
            console.print(f"[bold]Building the default {name} store[/] (first run only) into {path}")
            build_store(corpus_spec(STORES[name]), MODEL, path, BuildParams())
    # A SIGTERM must also stop the server: turn it into the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ServerProcess(paths["code"], ["--store", f"chat={paths['chat']}"]) as server:
            console.print(f"[bold]Serving[/] the code and chat stores on {server.address}; loading {MODEL}")
            return _decode_through(server.address, paths, args, console)
    except KeyboardInterrupt:
        console.print("demo interrupted; the server was stopped")
        return 130


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _decode_through(address: str, paths: dict[str, Path], args: argparse.Namespace, console: Console) -> int:
    target = load_target(MODEL)
    prompts = [DemoPrompt(f"HumanEval {i}", text, False) for i, text in enumerate(humaneval_prompts(args.humaneval))]
    prompts += [DemoPrompt(f"MT-Bench {i}", text, True) for i, text in enumerate(mtbench_questions(args.mtbench))]
    clients = {name: DraftClient(address, store="" if name == "code" else name) for name in STORES}
    try:
        for client in clients.values():
            client.check_tokenizer(target.tokenizer_fingerprint)
        lookups = {name: TimedSource(ServiceSource(client)) for name, client in clients.items()}
        decoders = {name: _decoders(target, lookups[name]) for name in STORES}
        table = _table()
        for prompt in prompts:
            console.rule(f"{prompt.title} (drafts from the {prompt.store} store and the prompt)")
            ids = target.encode_prompt(prompt.text, prompt.chat)
            print(prompt.text if not prompt.chat else f"[chat] {prompt.text}", flush=True)
            runs = decoders[prompt.store]
            color = not args.no_color and sys.stdout.isatty()
            stream_to_terminal(runs["both"], target, ids, args.max_new_tokens, [], color)
            table.add_row(*_row(prompt.title, _rounds(runs, ids, args.max_new_tokens)))
    finally:
        for client in clients.values():
            client.close()
    console.print(table)
    seconds = [s for source in lookups.values() for s in source.seconds]
    latency = statistics.median(seconds) * 1e3 if seconds else 0.0
    sizes = ", ".join(f"{name} {format_bytes(resolve_store(path).stat().st_size)}" for name, path in paths.items())
    console.print(f"stores: {sizes}; lookup p50 {latency:.2f} ms ({len(seconds)} lookups)")
    return 0


def _rounds(decoders: dict[str, Decoder], ids: list[int], max_new_tokens: int) -> list[dict[str, Generation]]:
    """ROUNDS rounds, every configuration once a round, in an order rotated by one each round. A ratio
    compares runs made seconds apart: this machine's memory speed moves within minutes, and taking
    each configuration's fastest run let one fast moment of plain decoding set a whole row below 1x."""
    names = list(decoders)
    rounds = []
    for index in range(ROUNDS):
        turn = index % len(names)
        rounds.append({name: decoders[name].generate(ids, max_new_tokens) for name in names[turn:] + names[:turn]})
    return rounds


def _decoders(target: TargetModel, store: DraftSource) -> dict[str, Decoder]:
    """Plain decoding and the three draft configurations, all in the same engine."""
    sources = {"store": store, "lookup": WithPromptLookup(NoDrafts()), "both": WithPromptLookup(store)}
    decoders = {name: make_decoder(target, source) for name, source in sources.items()}
    decoders["plain"] = make_decoder(target, NoDrafts(), max_nodes=0)
    return decoders


def _table() -> Table:
    table = Table(
        title=f"Speedup over plain decoding, same engine, median of {ROUNDS} rounds (tokens/step)",
        title_justify="left",
    )
    table.add_column("prompt")
    table.add_column("plain tok/s", justify="right")
    for name in CONFIGURATIONS:
        table.add_column(name, justify="right")
    table.add_column("same", justify="center")
    return table


def _row(title: str, rounds: list[dict[str, Generation]]) -> list[str]:
    """The prompt's row: plain decoding's median tokens/s, each configuration's median ratio to it
    within a round (and its mean accepted tokens per step), and whether every output equals plain's."""
    plain = [round_["plain"] for round_ in rounds]
    cells = [title, f"{statistics.median(run.tokens_per_second for run in plain):.1f}"]
    for name in CONFIGURATIONS:
        runs = [round_[name] for round_ in rounds]
        speedup = statistics.median(
            run.tokens_per_second / max(base.tokens_per_second, 1e-9) for run, base in zip(runs, plain)
        )
        cells.append(f"{speedup:.2f}x ({statistics.mean(run.mean_accepted_length for run in runs):.1f})")
    same = all(round_[name].tokens == round_["plain"].tokens for round_ in rounds for name in CONFIGURATIONS)
    cells.append("yes" if same else "NO")
    return cells
