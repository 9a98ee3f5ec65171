/* Prompt lookup merged with a stored tree, for one sequence in one call: the compiled form of
 * prompt_lookup.py (`prompt_lookup_tree`, then `merge_trees`), which states the rule and stays its
 * reference; tests hold the two bit-identical. In Python the step builds path tuples and
 * dictionaries per node (~40 us a sequence warm, more after a forward pass has flushed the caches);
 * a batch of 8 rows pays that 8 times a step, on the host, while an accelerator waits.
 *
 * The rule: the newest n tokens (n from ngram_sizes, first found wins) are searched for earlier in
 * the history; the continuations (up to max_depth tokens) after the max_matches most recent matches
 * form a trie whose node probability is the share of matches continuing along it. Each trie path
 * merges into the stored tree: a path both have gets 1 - (1 - p)(1 - q). Nodes are then ranked by
 * (probability desc, depth, path), which keeps parents ahead of children. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    int32_t token;
    int32_t parent; /* index in the node list; -1 = the context */
    int32_t depth;
    double probability;
} Node;

/* The child of `parent` drafting `token` among nodes[0..count), or -1. */
static int64_t child_of(const Node *nodes, int64_t count, int32_t parent, int32_t token) {
    for (int64_t i = 0; i < count; i++)
        if (nodes[i].parent == parent && nodes[i].token == token) return i;
    return -1;
}

/* The most recent ends j (descending) of earlier occurrences of the newest n tokens, at most `limit`. */
static int64_t match_ends(const int64_t *history, int64_t length, int64_t n, int64_t limit, int64_t *ends) {
    int64_t found = 0;
    for (int64_t j = length - 2; j >= n - 1 && found < limit; j--) {
        int64_t k = 0;
        while (k < n && history[j - k] == history[length - 1 - k]) k++;
        if (k == n) ends[found++] = j;
    }
    return found;
}

/* Path comparison for the ranking: tokens from the context down, `depth` of them each. */
static int path_before(const int32_t *paths, int64_t width, int64_t a, int64_t b, int32_t depth) {
    for (int32_t d = 0; d < depth; d++) {
        int32_t x = paths[a * width + d], y = paths[b * width + d];
        if (x != y) return x < y;
    }
    return 0;
}

static int ranks_before(const Node *nodes, const int32_t *paths, int64_t width, int64_t a, int64_t b) {
    if (nodes[a].probability != nodes[b].probability) return nodes[a].probability > nodes[b].probability;
    if (nodes[a].depth != nodes[b].depth) return nodes[a].depth < nodes[b].depth;
    return path_before(paths, width, a, b, nodes[a].depth);
}

/* Returns the merged tree's size (-1 out of memory, -2 if the stored tree's parents do not precede
 * their children); *matched = the n that matched, 0 if none (then nothing is written: the stored tree
 * is the answer). out_* hold store_size + matches * max_depth. */
static int64_t merged_tree(const int64_t *history, int64_t length, const int64_t *ngram_sizes, int64_t sizes,
                           int64_t max_depth, int64_t max_matches, const int32_t *store_tokens,
                           const int32_t *store_parents, const float *store_probabilities, int64_t store_size,
                           int32_t *out_tokens, int32_t *out_parents, float *out_probabilities, int64_t *matched) {
    *matched = 0;
    int64_t *ends = malloc((max_matches > 0 ? max_matches : 1) * sizeof(int64_t));
    if (ends == NULL) return -1;
    int64_t n = 0, found = 0;
    for (int64_t s = 0; s < sizes && found == 0; s++) {
        n = ngram_sizes[s];
        if (n >= 1 && n <= length - 1) found = match_ends(history, length, n, max_matches, ends);
    }
    if (found == 0) {
        free(ends);
        return 0;
    }
    *matched = n;
    int64_t capacity = store_size + found * max_depth;
    Node *nodes = malloc((capacity > 0 ? capacity : 1) * sizeof(Node));
    int64_t *counts = calloc(capacity > 0 ? capacity : 1, sizeof(int64_t));
    if (nodes == NULL || counts == NULL) {
        free(ends), free(nodes), free(counts);
        return -1;
    }
    int64_t count = 0, deepest = 0;
    for (int64_t i = 0; i < store_size; i++, count++) {
        int32_t parent = store_parents[i];
        if (parent < -1 || parent >= i) { /* not a tree (a server's answer is data): refuse, never read past it */
            free(ends), free(nodes), free(counts);
            return -2;
        }
        nodes[i] = (Node){store_tokens[i], parent, parent < 0 ? 1 : nodes[parent].depth + 1, (double)store_probabilities[i]};
    }
    int64_t stored = count;
    /* The trie of continuations, counted into the store's nodes where a path is the same. */
    for (int64_t m = 0; m < found; m++) {
        int32_t parent = -1;
        for (int64_t d = 0, at = ends[m] + 1; d < max_depth && at < length; d++, at++) {
            int32_t token = (int32_t)history[at];
            int64_t node = child_of(nodes, count, parent, token);
            if (node < 0) {
                node = count++;
                nodes[node] = (Node){token, parent, parent < 0 ? 1 : nodes[parent].depth + 1, 0.0};
            }
            counts[node]++;
            parent = (int32_t)node;
        }
    }
    for (int64_t i = 0; i < count; i++) {
        if (nodes[i].depth > deepest) deepest = nodes[i].depth;
        if (counts[i] == 0) continue;
        /* Rounded to float32 first: the Python rule merges the prompt lookup tree's float32 values. */
        double share = (double)(float)((double)counts[i] / (double)found);
        nodes[i].probability = i < stored ? 1.0 - (1.0 - nodes[i].probability) * (1.0 - share) : share;
    }
    free(ends), free(counts);
    int32_t *paths = malloc((count * deepest > 0 ? count * deepest : 1) * sizeof(int32_t));
    int64_t *order = malloc((count > 0 ? count : 1) * sizeof(int64_t));
    int32_t *position = malloc((count > 0 ? count : 1) * sizeof(int32_t));
    if (paths == NULL || order == NULL || position == NULL) {
        free(nodes), free(paths), free(order), free(position);
        return -1;
    }
    for (int64_t i = 0; i < count; i++) { /* parents precede children in the node list */
        int32_t parent = nodes[i].parent, depth = nodes[i].depth;
        for (int32_t d = 0; d < depth - 1; d++) paths[i * deepest + d] = paths[(int64_t)parent * deepest + d];
        paths[i * deepest + depth - 1] = nodes[i].token;
    }
    for (int64_t i = 0; i < count; i++) { /* insertion sort: a few dozen nodes */
        int64_t j = i;
        while (j > 0 && ranks_before(nodes, paths, deepest, i, order[j - 1])) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    for (int64_t r = 0; r < count; r++) position[order[r]] = (int32_t)r;
    for (int64_t r = 0; r < count; r++) {
        const Node *node = &nodes[order[r]];
        out_tokens[r] = node->token;
        out_parents[r] = node->parent < 0 ? -1 : position[node->parent];
        out_probabilities[r] = (float)node->probability;
    }
    free(nodes), free(paths), free(order), free(position);
    return count;
}

/* The history as int64 values: an int64 buffer read in place, or a sequence of ints (a decode loop's
 * list: converting it to an array first costs more than the lookup) copied into *owned (freed by the
 * caller). -1 with an exception if neither. */
static int64_t history_of(PyObject *object, Py_buffer *view, const int64_t **values, int64_t **owned) {
    *owned = NULL;
    view->obj = NULL;
    if (PyObject_CheckBuffer(object)) {
        if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
        if (view->itemsize != 8) {
            PyBuffer_Release(view);
            PyErr_SetString(PyExc_ValueError, "merged: the history must hold int64 ids");
            return -1;
        }
        *values = view->buf;
        return view->len / 8;
    }
    PyObject *items = PySequence_Fast(object, "merged: the history must be int64 ids or a sequence of ints");
    if (items == NULL) return -1;
    int64_t length = PySequence_Fast_GET_SIZE(items);
    *owned = malloc((length > 0 ? length : 1) * sizeof(int64_t));
    if (*owned == NULL) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return -1;
    }
    for (int64_t i = 0; i < length; i++) {
        (*owned)[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(items, i));
        if ((*owned)[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(items);
            free(*owned);
            *owned = NULL;
            return -1;
        }
    }
    Py_DECREF(items);
    *values = *owned;
    return length;
}

/* Python entry: merged(history, ngram_sizes, max_depth, max_matches, store_tokens, store_parents,
 * store_probabilities, out_tokens, out_parents, out_probabilities) -> (size, matched n); the history
 * int64 ids or a sequence of ints, int64 sizes, int32 tokens and parents, float32 probabilities,
 * C-contiguous. */
static PyObject *merged(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t max_depth, max_matches;
    PyObject *history_object;
    Py_buffer history, sizes, tokens, parents, probabilities, out_tokens, out_parents, out_probabilities;
    if (!PyArg_ParseTuple(args, "Oy*nny*y*y*w*w*w*", &history_object, &sizes, &max_depth, &max_matches, &tokens,
                          &parents, &probabilities, &out_tokens, &out_parents, &out_probabilities))
        return NULL;
    const int64_t *history_values = NULL;
    int64_t *owned = NULL;
    int64_t length = history_of(history_object, &history, &history_values, &owned);
    int64_t store_size = tokens.len / 4, result = -1, matched = 0;
    int64_t room = store_size + max_matches * max_depth;
    int fits = parents.len == tokens.len && probabilities.len == tokens.len && out_tokens.len >= room * 4 &&
               out_parents.len >= room * 4 && out_probabilities.len >= room * 4 && max_depth >= 0 && max_matches >= 0;
    if (fits && length >= 0) {
        Py_BEGIN_ALLOW_THREADS
        result = merged_tree(history_values, length, sizes.buf, sizes.len / 8, max_depth, max_matches, tokens.buf,
                             parents.buf, probabilities.buf, store_size, out_tokens.buf, out_parents.buf,
                             out_probabilities.buf, &matched);
        Py_END_ALLOW_THREADS
    }
    free(owned);
    if (history.obj != NULL) PyBuffer_Release(&history);
    Py_buffer *buffers[] = {&sizes, &tokens, &parents, &probabilities, &out_tokens, &out_parents, &out_probabilities};
    for (size_t i = 0; i < sizeof(buffers) / sizeof(buffers[0]); i++) PyBuffer_Release(buffers[i]);
    if (length < 0) return NULL;
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "merged: arrays of unequal length or output too small");
        return NULL;
    }
    if (result == -2) {
        PyErr_SetString(PyExc_ValueError, "merged: a stored node's parent does not precede it");
        return NULL;
    }
    if (result < 0) return PyErr_NoMemory();
    return Py_BuildValue("(LL)", (long long)result, (long long)matched);
}

static PyMethodDef methods[] = {
    {"merged", merged, METH_VARARGS, "Prompt lookup's tree merged into a stored one."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_prompt_lookup", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__prompt_lookup(void) { return PyModule_Create(&module); }
