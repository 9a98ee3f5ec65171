"""The compiled host work of a decode step (step_host_kernel.c) against the Python rules it compiles:
the ragged layout, the greedy walk, the calibration's lookup, counts and fit, the node budget's count."""

from __future__ import annotations

import numpy as np
import pytest

from datastore_service.draft import DraftTree
from decoder.acceptance import walk_greedy
from decoder.calibration import AcceptanceCalibration
from decoder.node_budget import CostCurve, NodeBudget
from decoder.tree_batch import PlanColumns, _step_host, ragged_rows
from tests.extensions import assert_built, needs

compiled_here = needs(_step_host, "decoder._step_host")


def test_the_install_builds_the_step_host_kernel() -> None:
    assert_built(_step_host, "decoder._step_host")


def random_tree(rng: np.random.Generator, nodes: int) -> DraftTree:
    parents = np.array([rng.integers(-1, i) for i in range(nodes)], np.int32)
    probabilities = np.sort(rng.random(nodes).astype(np.float32))[::-1].copy()
    tokens = rng.integers(0, 40, nodes).astype(np.int32)
    return DraftTree(tokens, parents, probabilities, 1 if nodes else 0, float(probabilities.sum()))


@compiled_here
def test_the_ragged_layout_is_the_python_one() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = int(rng.integers(1, 6))
        trees = [random_tree(rng, int(rng.integers(0, 30))) for _ in range(rows)]
        counts = [int(rng.integers(0, len(tree) + 1)) for tree in trees]
        roots = rng.integers(0, 40, rows).tolist()
        lengths = rng.integers(0, 500, rows).tolist()
        compiled = ragged_rows(roots, trees, counts, lengths, 32)
        reference = ragged_rows(roots, trees, counts, lengths, 32, compiled=False)
        for field in ("input_ids", "positions", "row_of", "offset_of", "starts", "sees"):
            got, expected = getattr(compiled[0], field), getattr(reference[0], field)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), field
        assert compiled[0].counts == reference[0].counts and compiled[1:] == reference[1:]


@compiled_here
def test_plans_laid_out_in_reused_columns_are_the_fresh_ones() -> None:
    rng = np.random.default_rng(5)
    columns = PlanColumns()
    for _ in range(100):  # counts repeat and grow: views are reused and the buffers reallocated
        rows = int(rng.integers(1, 9))
        trees = [random_tree(rng, int(rng.integers(0, 30))) for _ in range(rows)]
        counts = [len(tree) for tree in trees]
        roots, lengths = rng.integers(0, 40, rows).tolist(), rng.integers(0, 500, rows).tolist()
        reused = ragged_rows(roots, trees, counts, lengths, 32, columns=columns)
        fresh = ragged_rows(roots, trees, counts, lengths, 32)
        for field in ("input_ids", "positions", "row_of", "offset_of", "starts", "sees"):
            got, expected = getattr(reused[0], field), getattr(fresh[0], field)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), field
    assert columns.views(7)[0] is columns.views(7)[0]


@compiled_here
def test_the_ragged_layout_refuses_what_the_python_one_refuses() -> None:
    rng = np.random.default_rng(1)
    tree = random_tree(rng, 10)
    with pytest.raises(ValueError, match="does not fit"):
        ragged_rows([1], [tree], [8], [5], 8)
    broken = DraftTree(tree.tokens, np.full(10, 3, np.int32), tree.probabilities, 1, 0.0)
    with pytest.raises(ValueError, match="parent does not precede"):
        ragged_rows([1], [broken], [10], [5], 16)
    with pytest.raises(ValueError, match="nodes of a tree"):
        ragged_rows([1], [tree], [11], [5], 16)
    wide = DraftTree(tree.tokens.astype(np.int64), tree.parents, tree.probabilities, 1, 0.0)
    with pytest.raises(ValueError, match="4-byte items"):
        ragged_rows([1], [wide], [3], [5], 16)


@compiled_here
def test_the_greedy_walk_is_the_python_one() -> None:
    rng = np.random.default_rng(2)
    for _ in range(500):
        tree = random_tree(rng, int(rng.integers(0, 40)))
        _, (tokens,), (parents,) = ragged_rows([7], [tree], [len(tree)], [0], 64)
        predicted = rng.integers(0, 40, len(tokens)).tolist()
        for child in range(1, len(tokens)):  # follow drafted children often, so walks go deep
            if rng.random() < 0.7:
                predicted[parents[child]] = tokens[child]
        assert walk_greedy(tokens, parents, predicted) == walk_greedy(tokens, parents, predicted, compiled=False)
    with pytest.raises(ValueError, match="fewer predictions"):
        walk_greedy([1, 2], [-1, 0], [2])


@compiled_here
def test_calibration_counts_and_fit_are_the_python_ones() -> None:
    rng = np.random.default_rng(3)
    compiled, reference = AcceptanceCalibration(), AcceptanceCalibration()
    for _ in range(300):
        tree = random_tree(rng, int(rng.integers(1, 30)))
        gains, depths = compiled.calibrate_tree(tree)
        expected_gains, expected_depths = reference.calibrate_tree(tree, compiled=False)
        assert np.array_equal(gains, expected_gains) and np.array_equal(depths, expected_depths)
        assert depths.dtype == expected_depths.dtype == np.int32
        count = int(rng.integers(1, len(tree) + 1))  # the nodes verified: the first count
        accepted = sorted(set(rng.integers(0, count, 3).tolist()))
        compiled.observe_accepted(tree.probabilities, accepted, depths, count)
        reference.observe_accepted(tree.probabilities, accepted, expected_depths, count, compiled=False)
        if not reference._pending:  # both refitted: the same cells, the same table
            assert np.array_equal(compiled.verified, reference.verified)
            assert np.array_equal(compiled.accepted, reference.accepted)
            np.testing.assert_allclose(compiled.stated, reference.stated, rtol=1e-12)
            np.testing.assert_allclose(compiled._table, reference._table, rtol=1e-12)
    assert compiled._observed > 1000
    np.testing.assert_allclose(compiled._fit(), compiled._fit(compiled=False), rtol=1e-12)
    with pytest.raises(ValueError, match="outside the tree"):
        compiled.observe_accepted(tree.probabilities, [len(tree)], depths)
    with pytest.raises(ValueError, match="fewer nodes than counted"):
        compiled.observe_accepted(tree.probabilities, [], depths, len(tree) + 1)


@compiled_here
def test_the_budget_count_is_numpy_s() -> None:
    rng = np.random.default_rng(4)
    curve = CostCurve([1, 2, 4, 8, 16, 32, 64], [3.6, 3.9, 4.6, 7.0, 12.5, 23.4, 44.8], 1e-4)
    budget = NodeBudget(32, curve)
    chosen = set()
    for _ in range(500):
        gains = np.sort(rng.random(int(rng.integers(1, 40))) ** rng.uniform(0.2, 4))[::-1].copy()
        count = budget.best_count(gains, padded=True)
        assert count == budget.best_count(gains, padded=True, compiled=False)
        chosen.add(count)
    assert len(chosen) > 3  # the gains spanned more than one answer
