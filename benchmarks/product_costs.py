"""The matrix products of one verification pass of SmolLM2, float32 on a CPU: oneDNN with prepacked
weights against our panel kernel (decoder/panel_linear.py), and, where the CPU has AVX-512, the
layers' products from the model's Q4_1 codes (decoder/q4_panels.py; the head through the panel
kernel), by fed tokens.

    python benchmarks/product_costs.py [--tokens 1,8,16,24,32,64,160] [--repeats 9]

A pass's products are every layer's q/k/v, attention output, gate/up and down, and the head. The
forms run the same joined weights (the codes rebuild them bit for bit); per token count they take turns, and the fastest of --repeats
is printed (on a shared machine noise only slows a pass down). What it answers: what a fed token
adds to a pass's products, where the weights' reading and the arithmetic overlap and where not.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from decoder import panel_linear, q4_panels
from decoder.projections import JointLinear, PackedLinear, PanelLinear, can_pack
from decoder.target_model import load_target


def pass_products(model: torch.nn.Module, kind: type[JointLinear]) -> list[tuple[JointLinear, int]]:
    """The products of one pass, in the order a pass runs them, each with its input's width."""
    products: list[tuple[JointLinear, int]] = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        joined = [(attention.q_proj, attention.k_proj, attention.v_proj), (attention.o_proj,)]
        joined += [(mlp.gate_proj, mlp.up_proj), (mlp.down_proj,)]
        products += [(kind(*linears), linears[0].in_features) for linears in joined]
    return products + [(kind(model.lm_head), model.lm_head.in_features)]


def code_products(model: torch.nn.Module, codes: list[dict[str, torch.Tensor]]) -> list[tuple[Callable, int]]:
    """The same pass with every layer's products from the packed codes, the head from the panel kernel."""
    products: list[tuple[Callable, int]] = []
    for layer in codes:
        for joint in q4_panels.JOINTS:
            packed = layer[joint]
            out_features = packed.shape[0] * q4_panels.PANEL
            width = packed.shape[1] * q4_panels.BLOCK
            products.append((lambda x, p=packed, n=out_features: q4_panels.linear(x, p, n), width))
    return products + [(PanelLinear(model.lm_head), model.lm_head.in_features)]


def fastest_alternating(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each run's fastest time in ms, the runs taking turns."""
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats + 1):  # the first round is a warm-up
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {name: min(times[1:]) * 1e3 for name, times in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1,8,16,24,32,64,160", help="comma-separated fed token counts")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    target = load_target("smollm2", "float32", "cpu")
    model = target.model
    if not (can_pack(model) and panel_linear.available(next(model.parameters()))):
        raise SystemExit("needs oneDNN and the panel kernel's AVX-512 or AVX2 code on this CPU")
    forms = {"oneDNN": pass_products(model, PackedLinear), "panel": pass_products(model, PanelLinear)}
    codes = q4_panels.packed_layers(model, target.gguf) if q4_panels.available() else None
    if codes is not None:
        forms["codes"] = code_products(model, codes)
    print(
        f"SmolLM2 float32, {torch.get_num_threads()} threads, panel kernel in {panel_linear.instruction_set()}: "
        f"ms of one pass's products (fastest of {args.repeats})"
    )
    print("fed tokens | " + " | ".join(forms) + " | oneDNN / panel")
    with torch.inference_mode():
        for tokens in (int(t) for t in args.tokens.split(",")):
            inputs = {k: torch.randn(tokens, k) for k in (model.config.hidden_size, model.config.intermediate_size)}
            runs = {name: lambda ps=products, xs=inputs: [p(xs[w]) for p, w in ps] for name, products in forms.items()}
            ms = fastest_alternating(runs, args.repeats)
            print(
                f"{tokens} | "
                + " | ".join(f"{ms[name]:.1f}" for name in forms)
                + f" | {ms['oneDNN'] / ms['panel']:.2f}x"
            )


if __name__ == "__main__":
    main()
