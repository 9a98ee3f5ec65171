"""Flags of `crest generate`, kept free of torch so `crest --help` and the datastore side stay light."""

from __future__ import annotations

import argparse
from pathlib import Path

from datastore_service.draft import DEFAULT_SELECTION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_argument_group(
        "draft source (one is required)",
        "Checked before the model loads: the store opens, or a server answers and accepts the token, and the "
        "store was built with the model's tokenizer.",
    )
    source = sources.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", type=Path, help="draft from this store (.duckdb or .rest), in process")
    source.add_argument(
        "--server", action="append", metavar="HOST:PORT", help="draft from `crest serve` replicas (repeat for several)"
    )
    source.add_argument(
        "--no-store", action="store_true", help="no store: draft only from the sequence itself (prompt lookup)"
    )
    parser.add_argument(
        "--store-name", default="", help="which of the servers' stores drafts (default: their default store)"
    )
    parser.add_argument(
        "--learn",
        action="store_true",
        help="send the finished output to the server (Observe), so later lookups draft from it (needs --server)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics (accepted tokens per step, step time) on 127.0.0.1:PORT while generating",
    )
    secure = parser.add_argument_group("server security", "for --server replicas that serve TLS or want a token")
    secure.add_argument("--tls-ca", type=Path, default=None, help="CA (PEM) that signed the servers' certificates")
    secure.add_argument("--tls-cert", type=Path, default=None, help="client certificate (PEM), for mutual TLS")
    secure.add_argument("--tls-key", type=Path, default=None, help="private key of --tls-cert (PEM)")
    secure.add_argument("--tls-server-name", default=None, help="name in the server certificate, if not the address")
    secure.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding the servers' shared token (default: $CREST_TOKEN, if set)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="the prompt text (repeat for several prompts, decoded --batch-size at a time)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="sequences decoded together, one draft lookup and one forward pass per step for all; "
        "with a single --prompt, that many completions of it (samples, with --temperature)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "eager", "static", "compiled"),
        default="auto",
        help="decode loop: static (preallocated KV cache, Llama-family models; on a CPU in float32 our own kernels "
        "for the products, attention and head, oneDNN with prepacked weights otherwise), compiled (the same, "
        "each pass replayed as a CUDA graph: GPU only), eager (transformers' forward, any "
        "model: the reference); auto: compiled on a GPU, static on a CPU, eager where the model needs it",
    )
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--model", default="smollm2", help="target model: smollm2, gemma3, a .gguf or a HF folder")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights and activations"
    )
    parser.add_argument(
        "--float32-residual",
        action="store_true",
        help="with --dtype bfloat16/float16: keep the residual stream in float32 (output closer to float32 "
        "decoding, a few percent slower per pass; static and compiled engines)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many new tokens")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (exactly plain greedy output)")
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling: keep the likeliest tokens up to this mass"
    )
    parser.add_argument("--top-k", type=int, default=0, help="sampling: keep the k likeliest tokens (0 = all)")
    parser.add_argument("--max-nodes", type=int, default=32, help="most draft nodes verified per step")
    parser.add_argument(
        "--fixed-nodes",
        action="store_true",
        help="always verify --max-nodes nodes instead of choosing by the measured cost curve",
    )
    parser.add_argument("--no-prompt-lookup", action="store_true", help="draft from the store only")
    parser.add_argument(
        "--selection",
        choices=("merged", "chained", "scored", "longest"),
        default=None,
        help=f"default: the server's (with --server), else {DEFAULT_SELECTION}. "
        "merged: the matching contexts' trees combined, the longest's first (drafts at least what longest "
        "does); chained: merged, grown at its likeliest nodes by the trees of their own contexts (more "
        "lookups, no more bytes; drafts at least what merged does); scored: the matching tree expected to get "
        "the most tokens accepted; longest: the longest matching context (REST's rule)",
    )
    parser.add_argument("--compare", action="store_true", help="also decode without drafts and compare")
    parser.add_argument("--color", action="store_true", help="mark accepted draft tokens in green")
