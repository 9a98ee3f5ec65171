/* A decode step's host work on its small trees, compiled: laying out a ragged pass's fed tokens
 * (tree_batch.py's `ragged_rows`), the greedy walk (acceptance.py's `walk_greedy`), the node
 * calibration's lookup and fit (calibration.py) and the node budget's count (node_budget.py's
 * `best_count`). The Python functions state each rule and stay its reference; tests hold the two
 * equal. Why compiled: each is a handful of numpy calls or a Python loop on a few dozen values, and
 * between two passes they run with caches the pass has flushed, so a step's ~40 such operations
 * cost 0.15-0.3 ms against a 4-5 ms pass on a 2-core CPU; here each is one call. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_FED 64 /* a fed token's ancestry is one uint64 (ragged_attention.MAX_FED) */
#define MAX_COLUMNS 256 /* probability bins of a calibration row */

/* A C-contiguous buffer of `itemsize`-byte items (numpy's int32 / float32 / int64 arrays). */
static int items_of(PyObject *array, Py_buffer *view, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(array, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (view->itemsize != itemsize) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: expected %zd-byte items", what, itemsize);
        return -1;
    }
    return 0;
}

/* A Python list of `count` ints. */
static PyObject *int_list(const int64_t *values, Py_ssize_t count) {
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyLong_FromLongLong(values[i]);
        if (value == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, value);
    }
    return list;
}

/* One row's fed tokens: the root at offset 0, node i < nodes of the tree at offset i + 1. Writes the five
 * columns (of n items) from `at`, the row's tokens and fed parents; returns its count, -1 on error. */
static Py_ssize_t lay_out_row(int64_t root, PyObject *tree, Py_ssize_t nodes, int64_t start, int64_t row,
                              Py_ssize_t width, int64_t *columns[5], Py_ssize_t n, Py_ssize_t at, int64_t *tokens_out,
                              int64_t *parents_out) {
    PyObject *tokens_array = PyObject_GetAttrString(tree, "tokens");
    if (tokens_array == NULL) return -1;
    PyObject *parents_array = PyObject_GetAttrString(tree, "parents");
    if (parents_array == NULL) {
        Py_DECREF(tokens_array);
        return -1;
    }
    Py_buffer tokens, parents;
    Py_ssize_t count = -1;
    if (items_of(tokens_array, &tokens, 4, "ragged_rows: a tree's tokens") == 0) {
        if (items_of(parents_array, &parents, 4, "ragged_rows: a tree's parents") == 0) {
            const int32_t *token = tokens.buf, *parent = parents.buf;
            if (parents.len != tokens.len)
                PyErr_SetString(PyExc_ValueError, "ragged_rows: a tree's tokens and parents differ in length");
            else if (nodes < 0 || nodes > tokens.len / 4)
                PyErr_Format(PyExc_ValueError, "ragged_rows: %zd nodes of a tree of %zd", nodes, tokens.len / 4);
            else if (nodes + 1 > width || width > MAX_FED)
                PyErr_Format(PyExc_ValueError, "a tree of %zd nodes does not fit a pass of width %zd", nodes, width);
            else if (at + nodes + 1 > n)
                PyErr_SetString(PyExc_ValueError, "ragged_rows: the columns hold fewer fed tokens than the trees");
            else {
                int64_t depth[MAX_FED];
                uint64_t sees[MAX_FED];
                count = nodes + 1;
                for (Py_ssize_t i = 0; i < count; i++) {
                    int64_t fed_parent = i == 0 ? -1 : (int64_t)parent[i - 1] + 1;
                    if (i > 0 && (fed_parent < 0 || fed_parent >= i)) {
                        PyErr_SetString(PyExc_ValueError, "ragged_rows: a node's parent does not precede it");
                        count = -1;
                        break;
                    }
                    depth[i] = i == 0 ? 0 : depth[fed_parent] + 1;
                    sees[i] = (i == 0 ? 0 : sees[fed_parent]) | ((uint64_t)1 << i);
                    tokens_out[i] = i == 0 ? root : token[i - 1];
                    parents_out[i] = fed_parent;
                    columns[0][at + i] = tokens_out[i];
                    columns[1][at + i] = start + depth[i];
                    columns[2][at + i] = row;
                    columns[3][at + i] = i;
                    memcpy(&columns[4][at + i], &sees[i], sizeof(uint64_t));
                }
            }
            PyBuffer_Release(&parents);
        }
        PyBuffer_Release(&tokens);
    }
    Py_DECREF(tokens_array);
    Py_DECREF(parents_array);
    return count;
}

/* ragged_rows(roots, trees, counts, starts, width, ids, positions, rows, offsets, sees) -> (fed_tokens,
 * fed_parents): per row b, its root roots[b] and the first counts[b] nodes of trees[b] (objects with
 * int32 `tokens` and `parents`) after starts[b] (int64) cached tokens, laid out in five 8-byte columns
 * of n (every row's 1 + count) items: input ids, positions, row, fed offset, and the fed offsets
 * each token sees as bits (its ancestors and itself);
 * returned, per row, its fed tokens and their fed parents (-1 for the root) as lists. (Five arrays, not
 * one of five rows: a step's host time pays more for five views of one than for five allocations.) */
static PyObject *ragged_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *roots, *trees, *counts;
    Py_buffer starts, column[5];
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "OOOy*nw*w*w*w*w*", &roots, &trees, &counts, &starts, &width, &column[0], &column[1],
                          &column[2], &column[3], &column[4]))
        return NULL;
    int64_t *columns[5];
    for (int c = 0; c < 5; c++) columns[c] = column[c].buf;
    PyObject *result = NULL, *all_tokens = NULL, *all_parents = NULL;
    Py_ssize_t rows = PySequence_Length(trees);
    if (rows < 0) goto done;
    if (PySequence_Length(roots) != rows || PySequence_Length(counts) != rows || starts.len != rows * 8) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "ragged_rows: roots, trees, counts and starts differ in length");
        goto done;
    }
    all_tokens = PyList_New(rows);
    all_parents = PyList_New(rows);
    if (all_tokens == NULL || all_parents == NULL) goto done;
    Py_ssize_t n = column[0].len / 8, at = 0;
    for (int c = 1; c < 5; c++)
        if (column[c].len != column[0].len) {
            PyErr_SetString(PyExc_ValueError, "ragged_rows: columns of unequal length");
            goto done;
        }
    for (Py_ssize_t b = 0; b < rows; b++) {
        int64_t tokens[MAX_FED], parents[MAX_FED];
        PyObject *root_object = PySequence_GetItem(roots, b), *tree = PySequence_GetItem(trees, b);
        PyObject *nodes_object = PySequence_GetItem(counts, b);
        int64_t root = root_object == NULL ? -1 : PyLong_AsLongLong(root_object);
        Py_ssize_t nodes = nodes_object == NULL ? -1 : PyLong_AsSsize_t(nodes_object), count = -1;
        if (tree != NULL && !PyErr_Occurred())
            count = lay_out_row(root, tree, nodes, ((const int64_t *)starts.buf)[b], b, width, columns, n, at, tokens,
                                parents);
        Py_XDECREF(root_object);
        Py_XDECREF(nodes_object);
        Py_XDECREF(tree);
        if (count < 0) goto done;
        PyObject *row_tokens = int_list(tokens, count), *row_parents = int_list(parents, count);
        if (row_tokens == NULL || row_parents == NULL) {
            Py_XDECREF(row_tokens);
            Py_XDECREF(row_parents);
            goto done;
        }
        PyList_SET_ITEM(all_tokens, b, row_tokens);
        PyList_SET_ITEM(all_parents, b, row_parents);
        at += count;
    }
    if (at != n) {
        PyErr_SetString(PyExc_ValueError, "ragged_rows: the columns hold more fed tokens than the trees");
        goto done;
    }
    result = PyTuple_Pack(2, all_tokens, all_parents);
done:
    Py_XDECREF(all_tokens);
    Py_XDECREF(all_parents);
    PyBuffer_Release(&starts);
    for (int c = 0; c < 5; c++) PyBuffer_Release(&column[c]);
    return result;
}

/* A sequence of ints as int64 values; -1 and an exception if an item is not an int or there are
 * more than `most`. */
static Py_ssize_t int64s_of(PyObject *sequence, int64_t *values, Py_ssize_t most, const char *what) {
    PyObject *items = PySequence_Fast(sequence, "walk_greedy: expected sequences of ints");
    if (items == NULL) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    if (count > most) {
        PyErr_Format(PyExc_ValueError, "walk_greedy: more than %zd %s", most, what);
        count = -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        values[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(items, i));
        if (values[i] == -1 && PyErr_Occurred()) {
            count = -1;
            break;
        }
    }
    Py_DECREF(items);
    return count;
}

/* walk_greedy(fed_tokens, fed_parents, predicted) -> (path, tokens): from the root (fed 0), follow the
 * first child (in fed order) whose token is the target's prediction after its parent; the fed indices
 * followed, and their tokens then the prediction where the walk stopped (the bonus token). */
static PyObject *walk_greedy(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *tokens_list, *parents_list, *predicted_list;
    if (!PyArg_ParseTuple(args, "OOO", &tokens_list, &parents_list, &predicted_list)) return NULL;
    int64_t tokens[MAX_FED], parents[MAX_FED], predicted[MAX_FED], path[MAX_FED], emitted[MAX_FED + 1];
    Py_ssize_t count = int64s_of(tokens_list, tokens, MAX_FED, "fed tokens");
    if (count < 0 || int64s_of(parents_list, parents, MAX_FED, "fed parents") != count) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "walk_greedy: tokens and parents differ in length");
        return NULL;
    }
    if (int64s_of(predicted_list, predicted, MAX_FED, "predictions") < count) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "walk_greedy: fewer predictions than fed tokens");
        return NULL;
    }
    Py_ssize_t length = 0;
    int64_t node = 0;
    for (;;) {
        int64_t match = -1;
        for (Py_ssize_t child = node + 1; child < count; child++) /* children follow their parent */
            if (parents[child] == node && tokens[child] == predicted[node]) {
                match = child;
                break;
            }
        if (match < 0) break;
        path[length] = match;
        emitted[length++] = tokens[match];
        node = match;
    }
    emitted[length] = predicted[node];
    PyObject *path_list = int_list(path, length), *emitted_list = int_list(emitted, length + 1);
    PyObject *result = path_list && emitted_list ? PyTuple_Pack(2, path_list, emitted_list) : NULL;
    Py_XDECREF(path_list);
    Py_XDECREF(emitted_list);
    return result;
}

/* A node's calibration cell: depth class (the last of the `classes` depth starts <= its depth, the
 * first if none) x probability bin (min(floor(p * bins), bins - 1), p widened to float64). */
static inline Py_ssize_t cell_of(float probability, int32_t depth, const int64_t *start, Py_ssize_t classes,
                                 Py_ssize_t bins) {
    Py_ssize_t depth_class = 0;
    while (depth_class + 1 < classes && start[depth_class + 1] <= depth) depth_class++;
    double scaled = (double)probability * (double)bins;
    Py_ssize_t bin = scaled < (double)bins ? (Py_ssize_t)scaled : bins - 1;
    return depth_class * bins + (bin < 0 ? 0 : bin);
}

/* calibrated(probabilities, parents, depth_starts, table, bins, out, depths): per node of a tree (float32
 * probabilities, int32 parents, each before its children), its depth (1 under the context) into the
 * int32 depths, and the table's value at its cell (`cell_of`; int64 depth_starts) into the float64
 * out; the float64 table is [classes, bins]. */
static PyObject *calibrated(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer probabilities, parents, starts, table, out, depths;
    Py_ssize_t bins;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nw*w*", &probabilities, &parents, &starts, &table, &bins, &out, &depths))
        return NULL;
    Py_ssize_t count = probabilities.len / 4, classes = starts.len / 8;
    int fits = parents.len == count * 4 && depths.len == count * 4 && out.len == count * 8 && bins > 0 &&
               classes > 0 && table.len == classes * bins * 8, ordered = 1;
    if (fits) {
        const float *p = probabilities.buf;
        const int32_t *parent = parents.buf;
        const int64_t *start = starts.buf;
        const double *value = table.buf;
        double *result = out.buf;
        int32_t *depth = depths.buf;
        for (Py_ssize_t i = 0; i < count && ordered; i++) {
            ordered = parent[i] >= -1 && parent[i] < i;
            depth[i] = parent[i] < 0 || !ordered ? 1 : depth[parent[i]] + 1;
            result[i] = value[cell_of(p[i], depth[i], start, classes, bins)];
        }
    }
    Py_buffer *buffers[] = {&probabilities, &parents, &starts, &table, &out, &depths};
    for (size_t i = 0; i < sizeof(buffers) / sizeof(buffers[0]); i++) PyBuffer_Release(buffers[i]);
    if (!fits || !ordered) {
        PyErr_SetString(PyExc_ValueError, fits ? "calibrated: a node's parent does not precede it"
                                               : "calibrated: arrays of unequal length or a table of another shape");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* best_count(gains, costs, cap) -> k: of the counts 0..min(len(gains), cap), the first that maximises
 * (1 + gains[0] + ... + gains[k - 1]) / costs[k]; float64 gains and costs (len(costs) > that count). */
static PyObject *best_count(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer gains, costs;
    Py_ssize_t cap;
    if (!PyArg_ParseTuple(args, "y*y*n", &gains, &costs, &cap)) return NULL;
    Py_ssize_t counted = gains.len / 8 < cap ? gains.len / 8 : cap, best = 0;
    int fits = counted >= 0 && costs.len / 8 > counted;
    if (fits) {
        const double *gain = gains.buf, *cost = costs.buf;
        double running = 0.0, best_rate = 1.0 / cost[0];
        for (Py_ssize_t k = 1; k <= counted; k++) {
            running += gain[k - 1]; /* the sum first, then the 1: as the reference's cumsum and add round */
            double rate = (running + 1.0) / cost[k];
            if (rate > best_rate) best_rate = rate, best = k;
        }
    }
    PyBuffer_Release(&gains);
    PyBuffer_Release(&costs);
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "best_count: fewer costs than counts");
        return NULL;
    }
    return PyLong_FromSsize_t(best);
}

/* observe(probabilities, accepted_nodes, depths, count, depth_starts, bins, verified, accepted, stated):
 * the first `count` nodes of a verified tree (float32 probabilities, int32 depths, the accepted nodes'
 * indices as ints) counted into their cells (`cell_of`) of the float64 [classes, bins] counts: +1
 * verified, +1 accepted for the accepted nodes, + the stated probability. */
static PyObject *observe(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *accepted_nodes;
    Py_buffer probabilities, depths, starts, verified, accepted, stated;
    Py_ssize_t count, bins;
    if (!PyArg_ParseTuple(args, "y*Oy*ny*nw*w*w*", &probabilities, &accepted_nodes, &depths, &count, &starts, &bins,
                          &verified, &accepted, &stated))
        return NULL;
    Py_ssize_t classes = starts.len / 8, cells = classes * bins;
    int fits = count >= 0 && probabilities.len >= count * 4 && depths.len >= count * 4 && bins > 0 && classes > 0 && verified.len == cells * 8 &&
               accepted.len == cells * 8 && stated.len == cells * 8, valid = 1;
    PyObject *nodes = fits ? PySequence_Fast(accepted_nodes, "observe: the accepted nodes must be a sequence") : NULL;
    if (nodes != NULL) {
        const float *p = probabilities.buf;
        const int32_t *depth = depths.buf;
        double *verified_count = verified.buf, *accepted_count = accepted.buf, *stated_sum = stated.buf;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(nodes) && valid; i++) { /* checked before counting */
            Py_ssize_t node = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(nodes, i));
            valid = node >= 0 && node < count;
        }
        for (Py_ssize_t i = 0; i < count && valid; i++) {
            Py_ssize_t cell = cell_of(p[i], depth[i], starts.buf, classes, bins);
            verified_count[cell] += 1.0;
            stated_sum[cell] += (double)p[i];
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(nodes) && valid; i++) {
            Py_ssize_t node = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(nodes, i));
            accepted_count[cell_of(p[node], depth[node], starts.buf, classes, bins)] += 1.0;
        }
        Py_DECREF(nodes);
    }
    Py_buffer *buffers[] = {&probabilities, &depths, &starts, &verified, &accepted, &stated};
    for (size_t i = 0; i < sizeof(buffers) / sizeof(buffers[0]); i++) PyBuffer_Release(buffers[i]);
    if (fits && nodes == NULL) return NULL;
    if (!fits || !valid) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, fits ? "observe: an accepted node outside the tree"
                                                   : "observe: fewer nodes than counted or counts of another shape");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The weighted pool-adjacent-violators fit of `columns` values (the closest non-decreasing sequence),
 * pooling left to right. */
static void non_decreasing(const double *value, const double *weight_of, Py_ssize_t columns, double *fit) {
    double mean[MAX_COLUMNS], weight[MAX_COLUMNS];
    Py_ssize_t size[MAX_COLUMNS], blocks = 0;
    for (Py_ssize_t i = 0; i < columns; i++) {
        mean[blocks] = value[i], weight[blocks] = weight_of[i], size[blocks++] = 1;
        while (blocks > 1 && mean[blocks - 2] > mean[blocks - 1]) {
            double total = weight[blocks - 2] + weight[blocks - 1];
            mean[blocks - 2] = (mean[blocks - 2] * weight[blocks - 2] + mean[blocks - 1] * weight[blocks - 1]) / total;
            weight[blocks - 2] = total, size[blocks - 2] += size[blocks - 1], blocks--;
        }
    }
    for (Py_ssize_t block = 0, i = 0; block < blocks; block++)
        for (Py_ssize_t k = 0; k < size[block]; k++) fit[i++] = mean[block];
}

/* fit(verified, accepted, stated, bins, prior_weight, trust_prior, table): calibration.py's `_fit` on
 * the float64 [classes, bins] counts into table: per cell its acceptance rate shrunk toward its stated
 * mean times the source's trust, pooled non-decreasing per depth class, capped by the shallower
 * class's. Sums run in order (numpy's pairwise sums may round the trust differently in its last bits). */
static PyObject *fit(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer verified, accepted, stated, table;
    Py_ssize_t bins;
    double prior_weight, trust_prior;
    if (!PyArg_ParseTuple(args, "y*y*y*nddw*", &verified, &accepted, &stated, &bins, &prior_weight, &trust_prior,
                          &table))
        return NULL;
    int fits = bins > 0 && bins <= MAX_COLUMNS && verified.len % (bins * 8) == 0 && accepted.len == verified.len &&
               stated.len == verified.len && table.len == verified.len;
    if (fits) {
        const double *seen = verified.buf, *taken = accepted.buf, *mass = stated.buf;
        double *out = table.buf, taken_sum = 0.0, mass_sum = 0.0, rate[MAX_COLUMNS], weight[MAX_COLUMNS];
        Py_ssize_t cells = verified.len / 8;
        for (Py_ssize_t c = 0; c < cells; c++) taken_sum += taken[c], mass_sum += mass[c];
        const double trust = (taken_sum + trust_prior) / (mass_sum + trust_prior);
        for (Py_ssize_t row = 0; row < cells / bins; row++) {
            for (Py_ssize_t j = 0; j < bins; j++) {
                const Py_ssize_t c = row * bins + j;
                const double center = ((double)j + 0.5) / (double)bins;
                const double stated_mean = seen[c] > 0 ? mass[c] / (seen[c] > 1 ? seen[c] : 1.0) : center;
                const double prior = stated_mean * trust < 1.0 ? stated_mean * trust : 1.0;
                rate[j] = (taken[c] + prior_weight * prior) / (seen[c] + prior_weight);
                weight[j] = seen[c] + prior_weight;
            }
            non_decreasing(rate, weight, bins, out + row * bins);
            if (row > 0) /* deeper never above shallower, bin by bin */
                for (Py_ssize_t j = 0; j < bins; j++)
                    if (out[(row - 1) * bins + j] < out[row * bins + j]) out[row * bins + j] = out[(row - 1) * bins + j];
        }
    }
    Py_buffer *buffers[] = {&verified, &accepted, &stated, &table};
    for (size_t i = 0; i < sizeof(buffers) / sizeof(buffers[0]); i++) PyBuffer_Release(buffers[i]);
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "fit: counts and table of unequal shape");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"ragged_rows", ragged_rows, METH_VARARGS, "A ragged pass's fed tokens laid out from the rows' trees."},
    {"walk_greedy", walk_greedy, METH_VARARGS, "The greedy walk down one row's fed tree."},
    {"calibrated", calibrated, METH_VARARGS, "Each node's calibrated acceptance probability from the table."},
    {"best_count", best_count, METH_VARARGS, "The count of ranked nodes that maximises tokens per second."},
    {"observe", observe, METH_VARARGS, "One verified tree counted into the calibration's cells."},
    {"fit", fit, METH_VARARGS, "The calibration's table from its cells' counts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_step_host", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__step_host(void) { return PyModule_Create(&module); }
