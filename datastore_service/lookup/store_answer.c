/* A store's LONGEST, SCORED and MERGED answers, one loop per query: the compiled form of the
 * lookups that small_batch.py (plain Python) and draft_index.py (numpy) state, and stay the
 * reference of; tests hold the three bit-identical. One call answers a whole batch: in a decode
 * step the Python paths cost 70-430 us (1-8 sequences) where their code runs cold after a pass.
 * The GIL is released for it, so the server's other threads keep going.
 *
 * Per query: the hashes of its last 1..width tokens (context_hash.py's fold), each found by binary
 * search among the sorted context hashes and verified token by token; then the chosen context's
 * tree (its first max_nodes nodes, those deeper than max_depth dropped), or for MERGED the longest
 * context's tree followed by each shorter one's branches whose first token is not yet drafted,
 * scaled by the mass the longer contexts leave (tree_merge.py states the rule).
 *
 * The serving arrays come in several integer widths (serving_arrays.py): each is read through a
 * Column that knows its element size. Probabilities are count ratios divided in double and rounded
 * to float, scores summed left to right in double, as the Python paths do. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define HASH_MULTIPLIER 0x9E3779B97F4A7C15ULL

enum { SELECT_LONGEST = 0, SELECT_SCORED = 1, SELECT_MERGED = 2 };

typedef struct {
    const void *data;
    int size; /* bytes an element: 1, 2, 4 or 8 */
} Column;

static inline int64_t signed_at(Column column, int64_t i) {
    switch (column.size) {
    case 1: return ((const int8_t *)column.data)[i];
    case 2: return ((const int16_t *)column.data)[i];
    case 4: return ((const int32_t *)column.data)[i];
    default: return ((const int64_t *)column.data)[i];
    }
}

static inline uint64_t unsigned_at(Column column, int64_t i) {
    switch (column.size) {
    case 1: return ((const uint8_t *)column.data)[i];
    case 2: return ((const uint16_t *)column.data)[i];
    case 4: return ((const uint32_t *)column.data)[i];
    default: return ((const uint64_t *)column.data)[i];
    }
}

/* One serving file's arrays (serving_arrays.py documents each). */
typedef struct {
    int64_t contexts, width, max_tree_depth;
    uint64_t seed;
    const uint64_t *hashes;
    Column context_tokens, context_lengths, context_counts, tree_offsets, node_tokens, node_parents, cumulative;
} Store;

typedef struct {
    int32_t *tokens;
    int32_t *parents;
    float *probabilities;
} Nodes;

typedef struct {
    int64_t row, length;
} Match;

/* First index in the ascending `hashes` whose value is not below `value` (bisect_left). */
static int64_t lower_bound(const uint64_t *hashes, int64_t count, uint64_t value) {
    int64_t low = 0, high = count;
    while (low < high) {
        int64_t middle = low + (high - low) / 2;
        if (hashes[middle] < value) low = middle + 1;
        else high = middle;
    }
    return low;
}

/* The stored contexts the query (`tail`: width tokens, right-aligned, `length` of them real) ends
 * with, shortest first, into `matches`; how many. */
static int64_t find_matches(const Store *store, const int64_t *tail, int64_t length, Match *matches) {
    int64_t width = store->width, found_count = 0;
    uint64_t state = store->seed;
    for (int64_t n = 1; n <= length && n <= width; n++) {
        state = (state ^ ((uint64_t)tail[width - n] + 1u)) * HASH_MULTIPLIER;
        state ^= state >> 31;
        int64_t row = lower_bound(store->hashes, store->contexts, state);
        if (row == store->contexts || store->hashes[row] != state ||
            unsigned_at(store->context_lengths, row) != (uint64_t)n)
            continue;
        int same = 1;
        for (int64_t column = width - n; column < width && same; column++)
            same = unsigned_at(store->context_tokens, row * width + column) == (uint64_t)tail[column];
        if (same) matches[found_count++] = (Match){row, n};
    }
    return found_count;
}

/* Context `tree`'s first max_nodes nodes less those deeper than max_depth, parents renumbered among
 * the kept ones, into `out`; how many. `depths` and `renumbered`: scratch for max_nodes nodes. */
static int64_t tree_nodes(const Store *store, int64_t tree, int64_t max_nodes, int64_t max_depth, Nodes out,
                          int32_t *depths, int32_t *renumbered) {
    int64_t start = signed_at(store->tree_offsets, tree);
    int64_t size = signed_at(store->tree_offsets, tree + 1) - start, take = size < max_nodes ? size : max_nodes;
    double count = (double)unsigned_at(store->context_counts, tree);
    int prune = max_depth < store->max_tree_depth;
    uint64_t before = 0;
    int64_t kept = 0;
    for (int64_t i = 0; i < take; i++) {
        uint64_t now = unsigned_at(store->cumulative, start + i);
        float probability = (float)((double)(now - before) / count);
        before = now;
        int32_t parent = (int32_t)signed_at(store->node_parents, start + i);
        if (prune) {
            depths[i] = parent < 0 ? 1 : depths[parent] + 1;
            if (depths[i] > max_depth) {
                renumbered[i] = -1;
                continue;
            }
            renumbered[i] = (int32_t)kept;
            parent = parent < 0 ? -1 : renumbered[parent];
        }
        out.tokens[kept] = (int32_t)unsigned_at(store->node_tokens, start + i);
        out.parents[kept] = parent;
        out.probabilities[kept] = probability;
        kept++;
    }
    return kept;
}

/* LONGEST or SCORED: the matched context with the highest value, ties to the longer; -1 if none. */
static int64_t chosen_context(const Store *store, const Match *matches, int64_t count, int64_t max_nodes,
                              int scored, int64_t *length) {
    int64_t best = -1;
    double best_value = -1.0;
    for (int64_t m = 0; m < count; m++) { /* shortest first: `>=` hands ties to the longer */
        int64_t row = matches[m].row;
        double value = (double)matches[m].length;
        if (scored) {
            int64_t start = signed_at(store->tree_offsets, row);
            int64_t size = signed_at(store->tree_offsets, row + 1) - start;
            int64_t kept = size < max_nodes ? size : max_nodes;
            value = (double)unsigned_at(store->cumulative, start + kept - 1) /
                    (double)unsigned_at(store->context_counts, row);
        }
        if (value >= best_value) {
            best = row;
            best_value = value;
            *length = matches[m].length;
        }
    }
    return best;
}

static inline double clamped(double value) { return value < 0.0 ? 0.0 : (value > 1.0 ? 1.0 : value); }

static int covers(const int32_t *tokens, int64_t count, int32_t token) {
    for (int64_t i = 0; i < count; i++)
        if (tokens[i] == token) return 1;
    return 0;
}

/* Scratch of one batch, sized by its largest max_nodes (and the store's width). */
typedef struct {
    Nodes shorter;        /* a shorter context's nodes */
    int32_t *depths;      /* tree_nodes' */
    int32_t *renumbered;  /* tree_nodes' */
    int32_t *branch;      /* each shorter node's first-level token */
    int32_t *moved;       /* each shorter node's index in the merged tree, -1 if left out */
    int32_t *covered;     /* first-level tokens drafted so far */
} Scratch;

/* MERGED: the longest context's nodes, then each shorter context's branches whose first token no
 * longer context drafts, up to max_nodes in all; how many nodes went to `out`. */
static int64_t merged_nodes(const Store *store, const Match *matches, int64_t count, int64_t max_nodes,
                            int64_t max_depth, Nodes out, Scratch *scratch) {
    int64_t size = tree_nodes(store, matches[count - 1].row, max_nodes, max_depth, out, scratch->depths,
                              scratch->renumbered);
    if (count == 1 || size >= max_nodes) return size;
    int64_t covered = 0;
    double contributed = 0.0;
    for (int64_t i = 0; i < size; i++) {
        if (out.parents[i] >= 0) continue;
        scratch->covered[covered++] = out.tokens[i];
        contributed += (double)out.probabilities[i];
    }
    double residual = clamped(1.0 - contributed);
    for (int64_t m = count - 2; m >= 0 && size < max_nodes; m--) {
        Nodes shorter = scratch->shorter;
        int64_t nodes = tree_nodes(store, matches[m].row, max_nodes, max_depth, shorter, scratch->depths,
                                   scratch->renumbered);
        int64_t covered_before = covered;
        contributed = 0.0;
        for (int64_t i = 0; i < nodes; i++) {
            int32_t parent = shorter.parents[i];
            int32_t first = parent < 0 ? shorter.tokens[i] : scratch->branch[parent];
            scratch->branch[i] = first;
            scratch->moved[i] = -1;
            if (covers(scratch->covered, covered_before, first)) continue;
            if (size >= max_nodes) break; /* full: no more nodes, from this context or shorter ones */
            if (parent < 0) contributed += (double)shorter.probabilities[i];
            scratch->moved[i] = (int32_t)size;
            out.tokens[size] = shorter.tokens[i];
            out.parents[size] = parent < 0 ? -1 : scratch->moved[parent];
            out.probabilities[size] = (float)((double)shorter.probabilities[i] * residual);
            size++;
        }
        for (int64_t i = 0; i < nodes; i++) /* this context's first tokens, taken or not */
            if (shorter.parents[i] < 0 && !covers(scratch->covered, covered, shorter.tokens[i]))
                scratch->covered[covered++] = shorter.tokens[i];
        residual *= clamped(1.0 - contributed);
    }
    return size;
}

/* Scratch of one call, sized by its largest max_nodes and the store's width. */
typedef struct {
    Scratch scratch;
    Match *matches;
    int32_t *block;
} Workspace;

static int workspace_for(const Store *store, int64_t largest, Workspace *work) {
    if (largest < 1) largest = 1;
    /* Ints of `largest` each: a shorter context's tokens, parents, probabilities (floats), depths,
     * renumbered, branch and moved; then the covered first tokens, at most `largest` from each of at
     * most `width` contexts. */
    work->block = malloc((size_t)(7 * largest + store->width * largest) * sizeof(int32_t));
    work->matches = malloc((size_t)store->width * sizeof(Match));
    if (work->block == NULL || work->matches == NULL) {
        free(work->block);
        free(work->matches);
        return -1;
    }
    int32_t *block = work->block;
    work->scratch = (Scratch){
        .shorter = {block, block + largest, (float *)(block + 2 * largest)},
        .depths = block + 3 * largest,
        .renumbered = block + 4 * largest,
        .branch = block + 5 * largest,
        .moved = block + 6 * largest,
        .covered = block + 7 * largest,
    };
    return 0;
}

static void workspace_free(Workspace *work) {
    free(work->block);
    free(work->matches);
}

/* One query's tree into `into` (room for max_nodes): its size; *length = the matched context's
 * length (0 if none), *score = the sum of its probabilities, left to right in double. */
static int64_t answer_query(const Store *store, int selection, const int64_t *tail, int64_t tail_length,
                            int64_t max_nodes, int64_t max_depth, Nodes into, Workspace *work, int32_t *length,
                            float *score) {
    int64_t count = find_matches(store, tail, tail_length, work->matches), size = 0, matched = 0;
    if (count > 0 && selection == SELECT_MERGED) {
        size = merged_nodes(store, work->matches, count, max_nodes, max_depth, into, &work->scratch);
        matched = work->matches[count - 1].length;
    } else if (count > 0) {
        int64_t row = chosen_context(store, work->matches, count, max_nodes, selection == SELECT_SCORED, &matched);
        size = tree_nodes(store, row, max_nodes, max_depth, into, work->scratch.depths, work->scratch.renumbered);
    }
    double sum = 0.0;
    for (int64_t i = 0; i < size; i++) sum += (double)into.probabilities[i];
    *length = size > 0 ? (int32_t)matched : 0;
    *score = (float)sum;
    return size;
}

/* Every query's answer into out_* (room for `capacity` nodes). Returns the nodes written, -1 if
 * `capacity` is too small, -2 out of memory. */
static int64_t store_answers(const Store *store, int selection, int64_t queries, const int64_t *tails,
                             const int64_t *lengths, const int64_t *max_nodes, const int64_t *max_depth, Nodes out,
                             int64_t *out_offsets, int32_t *out_context_lengths, float *out_scores,
                             int64_t capacity) {
    int64_t largest = 1;
    for (int64_t q = 0; q < queries; q++)
        if (max_nodes[q] > largest) largest = max_nodes[q];
    Workspace work;
    if (workspace_for(store, largest, &work) != 0) return -2;
    int64_t written = 0;
    out_offsets[0] = 0;
    for (int64_t q = 0; q < queries; q++) {
        if (written + max_nodes[q] > capacity) {
            written = -1;
            break;
        }
        Nodes into = {out.tokens + written, out.parents + written, out.probabilities + written};
        written += answer_query(store, selection, tails + q * store->width, lengths[q], max_nodes[q], max_depth[q],
                                into, &work, out_context_lengths + q, out_scores + q);
        out_offsets[q + 1] = written;
    }
    workspace_free(&work);
    return written;
}

/* A serving file's arrays bound once (`bind`): the Store and the buffer views that keep them readable. */
enum { STORE_BUFFERS = 8, QUERY_BUFFERS = 4, WRITE_BUFFERS = 6, TREE_BUFFERS = 3 };
#define BOUND_CAPSULE "datastore_service.lookup._store_answer.Store"

typedef struct {
    Store store;
    Py_buffer views[STORE_BUFFERS];
} Bound;

static void release_bound(PyObject *capsule) {
    Bound *bound = PyCapsule_GetPointer(capsule, BOUND_CAPSULE);
    if (bound == NULL) return;
    for (int i = 0; i < STORE_BUFFERS; i++) PyBuffer_Release(bound->views + i);
    PyMem_Free(bound);
}

static int valid_size(int size) { return size == 1 || size == 2 || size == 4 || size == 8; }

/* bind(hashes, context_tokens, context_lengths, context_counts, tree_offsets, node_tokens,
 * node_parents, cumulative, element_sizes, contexts, width, seed, max_tree_depth) -> a capsule the
 * other entries answer from. `element_sizes`: the bytes of an element of the seven arrays after
 * `hashes`, in order. Every array's length is checked against the store's counts here, once. */
static PyObject *bind(PyObject *self, PyObject *args) {
    (void)self;
    int sizes[STORE_BUFFERS - 1];
    Py_ssize_t contexts, width, max_tree_depth;
    unsigned long long seed;
    Bound *bound = PyMem_Calloc(1, sizeof(Bound));
    if (bound == NULL) return PyErr_NoMemory();
    Py_buffer *in = bound->views;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*" "(iiiiiii)" "nnKn", &in[0], &in[1], &in[2], &in[3], &in[4], &in[5],
                          &in[6], &in[7], &sizes[0], &sizes[1], &sizes[2], &sizes[3], &sizes[4], &sizes[5],
                          &sizes[6], &contexts, &width, &seed, &max_tree_depth)) {
        PyMem_Free(bound); /* the parser released what it had taken */
        return NULL;
    }
    const char *problem = NULL;
    for (int i = 0; i < STORE_BUFFERS - 1; i++)
        if (!valid_size(sizes[i])) problem = "bind: an element size is not 1, 2, 4 or 8";
    if (width < 1 || contexts < 0) problem = "bind: the width must be positive";
    int fits = problem == NULL && in[0].len >= contexts * 8 && in[1].len >= contexts * width * sizes[0] &&
               in[2].len >= contexts * sizes[1] && in[3].len >= contexts * sizes[2] &&
               in[4].len >= (contexts + 1) * sizes[3];
    bound->store = (Store){
        contexts, width, max_tree_depth, (uint64_t)seed, in[0].buf, {in[1].buf, sizes[0]}, {in[2].buf, sizes[1]},
        {in[3].buf, sizes[2]}, {in[4].buf, sizes[3]}, {in[5].buf, sizes[4]}, {in[6].buf, sizes[5]},
        {in[7].buf, sizes[6]},
    };
    if (fits) { /* the nodes' arrays reach the offsets' last entry */
        int64_t nodes = signed_at(bound->store.tree_offsets, contexts);
        fits = nodes >= 0 && in[5].len >= nodes * sizes[4] && in[6].len >= nodes * sizes[5] &&
               in[7].len >= nodes * sizes[6];
    }
    if (problem == NULL && !fits) problem = "bind: an array is shorter than the store needs";
    PyObject *capsule = problem == NULL ? PyCapsule_New(bound, BOUND_CAPSULE, release_bound) : NULL;
    if (capsule == NULL) {
        for (int i = 0; i < STORE_BUFFERS; i++) PyBuffer_Release(in + i);
        PyMem_Free(bound);
        if (problem != NULL) PyErr_SetString(PyExc_ValueError, problem);
    }
    return capsule;
}

static const Store *bound_store(PyObject *capsule) {
    Bound *bound = PyCapsule_GetPointer(capsule, BOUND_CAPSULE);
    return bound == NULL ? NULL : &bound->store;
}

/* answers(bound, selection, queries, tails, lengths, max_nodes, max_depth, out_tokens, out_parents,
 * out_probabilities, out_offsets, out_context_lengths, out_scores, capacity) -> nodes written (-1
 * short of capacity, -2 out of memory). Tails [queries, width] and the limits int64, C-contiguous. */
static PyObject *answers(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *capsule;
    int selection;
    Py_ssize_t queries, capacity;
    Py_buffer query[QUERY_BUFFERS], out[WRITE_BUFFERS];
    if (!PyArg_ParseTuple(args, "Oin" "y*y*y*y*" "w*w*w*w*w*w*" "n", &capsule, &selection, &queries, &query[0],
                          &query[1], &query[2], &query[3], &out[0], &out[1], &out[2], &out[3], &out[4], &out[5],
                          &capacity))
        return NULL;
    const Store *store = bound_store(capsule);
    const char *problem = NULL;
    if (store == NULL) problem = "answers: not a bound store";
    else if (selection < SELECT_LONGEST || selection > SELECT_MERGED) problem = "answers: unknown selection";
    else if (!(query[0].len >= queries * store->width * 8 && query[1].len >= queries * 8 &&
               query[2].len >= queries * 8 && query[3].len >= queries * 8 && out[0].len >= capacity * 4 &&
               out[1].len >= capacity * 4 && out[2].len >= capacity * 4 && out[3].len >= (queries + 1) * 8 &&
               out[4].len >= queries * 4 && out[5].len >= queries * 4))
        problem = "answers: an array is shorter than the batch needs";
    int64_t written = -1;
    if (problem == NULL) {
        Nodes into = {out[0].buf, out[1].buf, out[2].buf};
        Py_BEGIN_ALLOW_THREADS
        written = store_answers(store, selection, queries, query[0].buf, query[1].buf, query[2].buf, query[3].buf,
                                into, out[3].buf, out[4].buf, out[5].buf, capacity);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < QUERY_BUFFERS; i++) PyBuffer_Release(&query[i]);
    for (int i = 0; i < WRITE_BUFFERS; i++) PyBuffer_Release(&out[i]);
    if (problem != NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    return PyLong_FromLongLong((long long)written);
}

/* tree(bound, selection, tokens, max_nodes, max_depth, vocab, out_tokens, out_parents,
 * out_probabilities) -> (size, context length, score), or None when `tokens` is not a list of
 * 1..width ints in [0, vocab) (the caller's general path then validates and names the problem).
 * One sequence straight from a Python list: no query batch, no answer batch. Limits already
 * validated (> 0); the outputs hold max_nodes. */
static PyObject *tree(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *capsule, *tokens;
    int selection;
    Py_ssize_t max_nodes, max_depth, vocab;
    Py_buffer out[TREE_BUFFERS];
    if (!PyArg_ParseTuple(args, "OiOnnn" "w*w*w*", &capsule, &selection, &tokens, &max_nodes, &max_depth, &vocab,
                          &out[0], &out[1], &out[2]))
        return NULL;
    const Store *store = bound_store(capsule);
    const char *problem = NULL;
    if (store == NULL) problem = "tree: not a bound store";
    else if (selection < SELECT_LONGEST || selection > SELECT_MERGED) problem = "tree: unknown selection";
    else if (max_nodes < 1 || max_depth < 1 || out[0].len < max_nodes * 4 || out[1].len < max_nodes * 4 ||
             out[2].len < max_nodes * 4)
        problem = "tree: limits below 1 or outputs shorter than max_nodes";
    int plain = problem == NULL && PyList_CheckExact(tokens) && PyList_GET_SIZE(tokens) >= 1 &&
                PyList_GET_SIZE(tokens) <= store->width;
    int64_t tail[256], length = plain ? PyList_GET_SIZE(tokens) : 0;
    if (plain && store->width > 256) plain = 0; /* the general path serves such stores */
    for (int64_t i = 0; plain && i < length; i++) {
        PyObject *item = PyList_GET_ITEM(tokens, i);
        long long token = PyLong_CheckExact(item) ? PyLong_AsLongLong(item) : -1;
        if (token == -1 && PyErr_Occurred()) PyErr_Clear();
        plain = token >= 0 && token < vocab;
        tail[store->width - length + i] = token;
    }
    PyObject *result = NULL;
    if (problem == NULL && plain) {
        Workspace work;
        int32_t context_length = 0;
        float score = 0.0f;
        int64_t size = -1;
        if (workspace_for(store, max_nodes, &work) == 0) {
            Nodes into = {out[0].buf, out[1].buf, out[2].buf};
            size = answer_query(store, selection, tail, length, max_nodes, max_depth, into, &work, &context_length,
                                &score);
            workspace_free(&work);
        }
        result = size < 0 ? PyErr_NoMemory() : Py_BuildValue("(Lid)", (long long)size, context_length, (double)score);
    } else if (problem == NULL) {
        result = Py_NewRef(Py_None);
    }
    for (int i = 0; i < TREE_BUFFERS; i++) PyBuffer_Release(&out[i]);
    if (problem != NULL) PyErr_SetString(PyExc_ValueError, problem);
    return result;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "A store's serving arrays, checked and bound once for the entries below."},
    {"answers", answers, METH_VARARGS, "Each query's draft tree from a bound store."},
    {"tree", tree, METH_VARARGS, "One sequence's draft tree from a bound store, straight from a list of ints."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_store_answer", NULL, -1, methods};

PyMODINIT_FUNC PyInit__store_answer(void) { return PyModule_Create(&module); }
