/* The learning store's LONGEST and MERGED answers, one loop per query: the compiled form of
 * `answer` in trees.py, which states the rule and stays its reference (tests compare the two,
 * bit for bit). A batch-64 answer in numpy is ~100 array calls of a few microseconds each; here it
 * is one call, and the GIL is released for it, so the server's ingestion threads keep going.
 *
 * Per query: the keys of its last 1..width tokens (hashing.py's fold), the longest one among the
 * overlay's sorted context keys, and that context's learned tree (first max_nodes nodes, deeper
 * than max_depth dropped) in place of the store's answer when it is at least as long a match.
 * MERGED then adds the store's answer behind a learned tree that leaves room (tree_merge.py): its
 * branches whose first token the learned tree does not draft, their probabilities scaled by the
 * mass the learned tree's first level leaves.
 *
 * Called through compiled_answer.py, which passes numpy arrays of the stated dtypes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define KEY_ROOT 0x853C49E6748FEA9BULL
#define KEY_MULTIPLIER 0xD6E8FEB86659FD93ULL

static inline uint64_t mix(uint64_t key, int64_t token) {
    uint64_t state = (key ^ ((uint64_t)(token < 0 ? 0 : token) + 1u)) * KEY_MULTIPLIER;
    return state ^ (state >> 32);
}

/* Index of `key` in the ascending `keys`, or -1. */
static int64_t find_key(const uint64_t *keys, int64_t count, uint64_t key) {
    int64_t low = 0, high = count;
    while (low < high) {
        int64_t middle = low + (high - low) / 2;
        if (keys[middle] < key) low = middle + 1;
        else high = middle;
    }
    return low < count && keys[low] == key ? low : -1;
}

/* The overlay's trees: contexts sorted by key, each with its node rows' start and count. */
typedef struct {
    int64_t contexts;
    const uint64_t *keys;
    const int64_t *starts;
    const int64_t *sizes;
    const int32_t *tokens;
    const int32_t *parents; /* local to the tree; -1 = the context */
    const int32_t *depths;
    const float *probabilities;
} LearnedTrees;

/* One answer per query, flat: tree q is nodes offsets[q]..offsets[q+1]. */
typedef struct {
    const int32_t *tokens;
    const int32_t *parents;
    const float *probabilities;
    const int64_t *offsets;
    const int32_t *context_lengths;
    const float *scores;
} Answers;

typedef struct {
    int32_t *tokens;
    int32_t *parents;
    float *probabilities;
} Nodes;

/* The longest suffix of `tail` (width tokens, right-aligned) that the overlay holds, at least
 * `shortest` long: its context row, and its length in *length; -1 if none. */
static int64_t longest_learned(const LearnedTrees *learned, const int64_t *tail, int64_t width, int64_t length,
                               int64_t shortest, int64_t *matched_length) {
    for (int64_t suffix = width < length ? width : length; suffix >= 1 && suffix >= shortest; suffix--) {
        uint64_t key = KEY_ROOT;
        for (int64_t column = width - suffix; column < width; column++) key = mix(key, tail[column]);
        if (key == 0) continue; /* 0 marks "no key" in the reference */
        int64_t row = find_key(learned->keys, learned->contexts, key);
        if (row >= 0) {
            *matched_length = suffix;
            return row;
        }
    }
    return -1;
}

/* The learned tree of context `row`, cut to max_nodes and max_depth, written to `out`; its size. */
static int64_t cut_learned(const LearnedTrees *learned, int64_t row, int64_t max_nodes, int64_t max_depth,
                           Nodes out, int32_t *renumbered) {
    int64_t start = learned->starts[row], take = learned->sizes[row] < max_nodes ? learned->sizes[row] : max_nodes;
    int64_t kept = 0;
    for (int64_t i = 0; i < take; i++) {
        renumbered[i] = -1;
        if (learned->depths[start + i] > max_depth) continue; /* and so are its descendants */
        int32_t parent = learned->parents[start + i];
        renumbered[i] = (int32_t)kept;
        out.tokens[kept] = learned->tokens[start + i];
        out.parents[kept] = parent < 0 ? -1 : renumbered[parent];
        out.probabilities[kept] = learned->probabilities[start + i];
        kept++;
    }
    return kept;
}

/* Append to `out` (holding `size` nodes, the learned tree) the store's tree's branches whose first
 * token the learned tree does not draft, scaled by the mass the learned first level leaves; at most
 * max_nodes in all. Siblings draft distinct tokens (DraftTree's invariant), so a first token is
 * compared with the learned tree's alone. Returns the new size. */
static int64_t merge_behind(Nodes out, int64_t size, const Answers *store, int64_t query, int64_t max_nodes,
                            int32_t *renumbered) {
    double contributed = 0.0;
    for (int64_t i = 0; i < size; i++)
        if (out.parents[i] < 0) contributed += (double)out.probabilities[i];
    double leaves = 1.0 - contributed;
    leaves = leaves < 0.0 ? 0.0 : (leaves > 1.0 ? 1.0 : leaves);
    int64_t first = store->offsets[query], count = store->offsets[query + 1] - first;
    int64_t merged = size;
    for (int64_t i = 0; i < count && merged < max_nodes; i++) {
        int32_t parent = store->parents[first + i], token = store->tokens[first + i];
        renumbered[i] = -1;
        if (parent >= 0) {
            if (renumbered[parent] < 0) continue; /* its branch was not taken */
        } else {
            int taken = 0;
            for (int64_t j = 0; j < size && !taken; j++) taken = out.parents[j] < 0 && out.tokens[j] == token;
            if (taken) continue;
        }
        renumbered[i] = (int32_t)merged;
        out.tokens[merged] = token;
        out.parents[merged] = parent < 0 ? -1 : renumbered[parent];
        out.probabilities[merged] = (float)((double)store->probabilities[first + i] * leaves);
        merged++;
    }
    return merged;
}

/* Each query's answer into out_* (room for `capacity` nodes): the store's (`store`) unless a learned
 * tree replaces it. Returns the nodes written, -1 if `capacity` is too small, -2 out of memory;
 * *replaced = how many queries took a learned tree. */
static int64_t learned_answers(int64_t queries, int64_t width, const int64_t *tails, const int64_t *lengths,
                        const int64_t *max_nodes, const int64_t *max_depth, int64_t contexts, const uint64_t *keys,
                        const int64_t *starts, const int64_t *sizes, const int32_t *tokens, const int32_t *parents,
                        const int32_t *depths, const float *probabilities, const int32_t *store_tokens,
                        const int32_t *store_parents, const float *store_probabilities, const int64_t *store_offsets,
                        const int32_t *store_context_lengths, const float *store_scores, int32_t merge,
                        int32_t *out_tokens, int32_t *out_parents, float *out_probabilities, int64_t *out_offsets,
                        int32_t *out_context_lengths, float *out_scores, int64_t capacity, int64_t *replaced) {
    const LearnedTrees learned = {contexts, keys, starts, sizes, tokens, parents, depths, probabilities};
    const Answers store = {store_tokens, store_parents, store_probabilities, store_offsets, store_context_lengths,
                           store_scores};
    int64_t scratch_size = 1; /* renumbering room: a tree of max_nodes, or the store's answer */
    for (int64_t q = 0; q < queries; q++) {
        int64_t store_size = store_offsets[q + 1] - store_offsets[q];
        if (max_nodes[q] > scratch_size) scratch_size = max_nodes[q];
        if (store_size > scratch_size) scratch_size = store_size;
    }
    int32_t *scratch = malloc(scratch_size * sizeof(int32_t));
    if (scratch == NULL) return -2;
    int64_t written = 0;
    *replaced = 0;
    out_offsets[0] = 0;
    for (int64_t q = 0; q < queries; q++) {
        int64_t store_first = store_offsets[q], store_size = store_offsets[q + 1] - store_first;
        int64_t length = 0;
        int64_t row = longest_learned(&learned, tails + q * width, width, lengths[q],
                                      store_context_lengths[q] > 1 ? store_context_lengths[q] : 1, &length);
        int64_t room = row >= 0 ? max_nodes[q] : store_size;
        if (written + room > capacity) {
            written = -1;
            break;
        }
        Nodes out = {out_tokens + written, out_parents + written, out_probabilities + written};
        int64_t size;
        if (row < 0) {
            for (int64_t i = 0; i < store_size; i++) {
                out.tokens[i] = store_tokens[store_first + i];
                out.parents[i] = store_parents[store_first + i];
                out.probabilities[i] = store_probabilities[store_first + i];
            }
            size = store_size;
            out_context_lengths[q] = size > 0 ? store_context_lengths[q] : 0;
            out_scores[q] = store_scores[q];
        } else {
            (*replaced)++;
            size = cut_learned(&learned, row, max_nodes[q], max_depth[q], out, scratch);
            if (merge && size < max_nodes[q])
                size = merge_behind(out, size, &store, q, max_nodes[q], scratch);
            double score = 0.0;
            for (int64_t i = 0; i < size; i++) score += (double)out.probabilities[i];
            out_context_lengths[q] = size > 0 ? (int32_t)length : 0;
            out_scores[q] = (float)score;
        }
        written += size;
        out_offsets[q + 1] = written;
    }
    free(scratch);
    return written;
}

/* Python entry: answers(queries, width, tails, lengths, max_nodes, max_depth, contexts, keys, starts,
 * sizes, tokens, parents, depths, probabilities, store_tokens, store_parents, store_probabilities,
 * store_offsets, store_context_lengths, store_scores, merge, out_tokens, out_parents,
 * out_probabilities, out_offsets, out_context_lengths, out_scores, capacity)
 * -> (nodes written, or -1 short of capacity, -2 out of memory; queries replaced). Arrays are C-contiguous buffers. */
enum { READ_BUFFERS = 17, WRITE_BUFFERS = 6 };

static PyObject *answers(PyObject *self, PyObject *args) {
    Py_ssize_t queries, width, contexts, capacity;
    int merge;
    Py_buffer in[READ_BUFFERS], out[WRITE_BUFFERS];
    if (!PyArg_ParseTuple(args, "nn" "y*y*y*y*" "n" "y*y*y*y*y*y*y*" "y*y*y*y*y*y*" "i" "w*w*w*w*w*w*" "n",
                          &queries, &width, &in[0], &in[1], &in[2], &in[3], &contexts, &in[4], &in[5], &in[6],
                          &in[7], &in[8], &in[9], &in[10], &in[11], &in[12], &in[13], &in[14], &in[15], &in[16],
                          &merge, &out[0], &out[1], &out[2], &out[3], &out[4], &out[5], &capacity))
        return NULL;
    /* The sizes the loop relies on (the learned trees' rows are the overlay's, consistent by construction). */
    int fits = in[0].len >= queries * width * 8 && in[1].len >= queries * 8 && in[2].len >= queries * 8 &&
               in[3].len >= queries * 8 && in[4].len >= contexts * 8 && in[5].len >= contexts * 8 &&
               in[6].len >= contexts * 8 && in[14].len >= (queries + 1) * 8 && in[15].len >= queries * 4 &&
               in[16].len >= queries * 4 && out[0].len >= capacity * 4 && out[1].len >= capacity * 4 &&
               out[2].len >= capacity * 4 && out[3].len >= (queries + 1) * 8 && out[4].len >= queries * 4 &&
               out[5].len >= queries * 4;
    if (fits) {
        int64_t store_nodes = ((const int64_t *)in[14].buf)[queries];
        fits = in[11].len >= store_nodes * 4 && in[12].len >= store_nodes * 4 && in[13].len >= store_nodes * 4;
    }
    int64_t written = -1, replaced = 0;
    if (fits) {
        Py_BEGIN_ALLOW_THREADS
        written = learned_answers(queries, width, in[0].buf, in[1].buf, in[2].buf, in[3].buf, contexts, in[4].buf,
                                  in[5].buf, in[6].buf, in[7].buf, in[8].buf, in[9].buf, in[10].buf, in[11].buf,
                                  in[12].buf, in[13].buf, in[14].buf, in[15].buf, in[16].buf, merge, out[0].buf,
                                  out[1].buf, out[2].buf, out[3].buf, out[4].buf, out[5].buf, capacity, &replaced);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < READ_BUFFERS; i++) PyBuffer_Release(&in[i]);
    for (int i = 0; i < WRITE_BUFFERS; i++) PyBuffer_Release(&out[i]);
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "answers: an array is shorter than the batch needs");
        return NULL;
    }
    return Py_BuildValue("(LL)", (long long)written, (long long)replaced);
}

static PyMethodDef methods[] = {
    {"answers", answers, METH_VARARGS, "Each query's answer, a learned tree in place of the store's where one matches."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_merged_answer", NULL, -1, methods};

PyMODINIT_FUNC PyInit__merged_answer(void) { return PyModule_Create(&module); }
