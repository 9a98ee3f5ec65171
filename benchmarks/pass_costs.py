"""The cost of one verification pass by rows and fed tokens, as the engine runs it.

    python benchmarks/pass_costs.py [--rows 8] [--history 200] [--repeats 7] [--device cpu]

Each pass feeds every row a chain of `width - 1` draft nodes after `--history` cached tokens (or
one real token and fillers, for the filler rows), through the engine's own pack and pass; the
fastest of --repeats timings is printed (on a shared machine noise only slows a pass down). What
it answers: what a batch of drafted rows costs against a batch of single tokens, and what a
filler slot costs (the engine prices both in its node budget); the most drafts could gain, a
chain whose every node is accepted (width tokens a row for one pass's cost at that width, against
one token a row for a plain pass's; the first kind's passes, host work left out); and a batch step as it comes
(trees of different sizes over rows of different lengths) in the ragged layout, which feeds only
real tokens (float32 on a CPU), and in the padded one. Where the fused layers run (layer_kernel.c),
each ragged pass is timed with them and with the torch layers they replace, where the screened
head runs (screened_head.py), also with it after the fused layers, and where the model's Q4_1 codes
serve the products (q4_panels.py), also with the float32 panels alone; the kinds taking turns.
"""

from __future__ import annotations

import argparse
import time

import torch

from decoder.decoders import make_decoder, resolve_engine
from decoder.draft_sources import NoDrafts
from decoder.engine import _chain_tree
from decoder.target_model import load_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--history", type=int, default=200, help="cached tokens before each row's fed ones")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args()
    target = load_target("smollm2", args.dtype, args.device)
    engine = make_decoder(target, NoDrafts(), max_nodes=63, rows=args.rows, engine=resolve_engine(target, "auto"))
    cache = engine._cache_for(args.rows, args.history + 64)
    vocab = target.model.config.vocab_size

    # Where the fused layers run, each pass is also timed with the torch layers, where the screened
    # head runs, with the float32 head after the fused layers, and where the model's Q4_1 codes serve
    # the products, with the float32 panels alone; the kinds taking turns. A kind: (layers, head, code rows).
    fused = engine.forward.fused if hasattr(engine, "forward") else None
    screened = engine.forward.screened_head if fused is not None else None
    code_rows = fused.code_rows if fused is not None else 0
    layer_kinds = {"": (None, None, 0)}
    if fused is not None:
        layer_kinds = {"fused layers": (fused, None, code_rows), "torch layers": (None, None, 0)}
    if screened is not None:
        layer_kinds = {"fused layers, screened head": (fused, screened, code_rows), **layer_kinds}
    if code_rows:
        layer_kinds = {**layer_kinds, "the same, float32 panels only": (fused, screened, 0)}

    @torch.inference_mode()
    def fastest(
        rows: int, width: int, nodes: int | list[int], histories: list[int] | None = None, ragged: bool = True
    ) -> list[float]:
        """The fastest pass of each kind, seconds."""
        per_row = nodes if isinstance(nodes, list) else [nodes] * rows
        kinds = layer_kinds if ragged else {"": (fused, screened, 0)}  # the padded pass has no fused layers
        timings: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.repeats + 1):  # the first is a warm-up
            for kind, (layers, head, rows_with_codes) in kinds.items():
                if fused is not None:
                    engine.forward.fused, engine.forward.screened_head = layers, head
                    fused.code_rows = rows_with_codes
                cache.reset()
                for row in range(rows):
                    cache.advance(row, histories[row] if histories else args.history)
                fed = engine._pack(cache, [0] * rows, [_chain_tree(n, vocab) for n in per_row], width)
                if target.device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                engine._verify(cache, fed, [[0]] * rows)
                timings[kind].append(time.perf_counter() - started)
        if fused is not None:
            engine.forward.fused, engine.forward.screened_head, fused.code_rows = fused, screened, code_rows
        return [min(times[1:]) for times in timings.values()]

    def shown(seconds: list[float]) -> str:
        return " / ".join(f"{s * 1e3:.1f}" for s in seconds)

    layers_text = "; " + " / ".join(layer_kinds) if fused is not None else ""
    print(
        f"engine {engine.name}, {args.device} {args.dtype}, {args.history} cached tokens a row; ms per pass{layers_text}"
    )
    widths = (1, 2, 4, 8)
    for rows in (1, args.rows):
        passes = {width: fastest(rows, width, width - 1) for width in widths}
        for width, seconds in passes.items():
            print(f"{rows} row{'s' if rows > 1 else ''} x {width} fed: {shown(seconds)}")
        ceilings = [width * passes[1][0] / passes[width][0] for width in widths[1:]]
        print(
            f"{rows} row{'s' if rows > 1 else ''}, every drafted node accepted, {'/'.join(map(str, widths[1:]))} fed: "
            f"at most {' / '.join(f'{c:.2f}x' for c in ceilings)} the plain pass's tokens/s"
        )
    for width in (4, 8):
        print(f"{args.rows} rows x 1 fed + {width - 1} fillers: {shown(fastest(args.rows, width, 0))}")
    # A drafted batch step as it comes: trees of different sizes, rows at different lengths.
    nodes = [min(7, n) for n in (0, 0, 1, 2, 3, 3, 3, 7) * (args.rows // 8 + 1)][: args.rows]
    histories = [args.history - 50 + 100 * row // max(1, args.rows - 1) for row in range(args.rows)]
    layouts = ("ragged", "padded") if engine.ragged else ("padded",)
    for layout in layouts:
        engine.ragged = layout == "ragged"
        print(
            f"{args.rows} rows, trees of {'/'.join(map(str, nodes))} nodes, {histories[0]}..{histories[-1]} cached, "
            f"{layout} layout: {shown(fastest(args.rows, 8, nodes, histories, ragged=engine.ragged))}"
        )


if __name__ == "__main__":
    main()
