"""The learning store's answer in process: the compiled kernel against the numpy rule, batch by batch.

    python benchmarks/overlay_answer.py [--batches 50] [--repeats 5]

An overlay over the default stdlib store learns the first 1,024 tokens of every stdlib document;
queries are 3-token contexts drawn from those documents (so most are answered
from learned trees, the flood's case), in batches of 64 asking up to 32 nodes. Per selection
(MERGED, LONGEST_MATCH): the median time of one batch's answer by the numpy rule, by the compiled
kernel, and of the store's own lookup of the same batch, all in this one run, alternating.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from ingest_load import corpus_documents

from datastore_service.build.pipeline import default_store_path
from datastore_service.lookup.index_loader import load_index
from datastore_service.overlay.compiled_answer import learned_answers
from datastore_service.overlay.overlay import Overlay
from datastore_service.overlay.trees import answer_in_numpy

BATCH = 64


def learned_overlay(index) -> tuple[Overlay, list[np.ndarray]]:
    overlay, sequences = Overlay(None, index), [document[:1024] for document in corpus_documents()]
    for first in range(0, len(sequences), 64):
        overlay.observe(sequences[first : first + 64])
    overlay.refresh()
    return overlay, sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    index = load_index(default_store_path("stdlib"))
    overlay, sequences = learned_overlay(index)
    view = overlay.trees.view
    rng = np.random.default_rng(0)
    queries = []
    for _ in range(BATCH * args.batches):
        document = sequences[rng.integers(len(sequences))]
        end = int(rng.integers(3, len(document)))
        queries.append(document[end - 3 : end].tolist())
    batches = [index.prepare(queries[i : i + BATCH], 32, 0) for i in range(0, len(queries), BATCH)]
    print(f"overlay: {len(view.keys):,} learned contexts from {sum(map(len, sequences)):,} tokens")
    for selection in ("merged", "longest"):
        timings: dict[str, list[float]] = {"numpy rule": [], "compiled": [], "store lookup": []}
        for _ in range(args.repeats):
            for batch in batches:
                started = time.perf_counter()
                static = index.lookup_batch(batch, selection)
                looked_up = time.perf_counter()
                answer_in_numpy(view, batch, static, selection)
                ruled = time.perf_counter()
                learned_answers(view, batch, static, merge=selection == "merged")
                compiled = time.perf_counter()
                timings["store lookup"].append(looked_up - started)
                timings["numpy rule"].append(ruled - looked_up)
                timings["compiled"].append(compiled - ruled)
        medians = ", ".join(f"{name} {statistics.median(values) * 1e6:.0f} us" for name, values in timings.items())
        print(f"{selection}, batch {BATCH}, median per batch: {medians}")


if __name__ == "__main__":
    main()
