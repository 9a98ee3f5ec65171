/* Tree attention of a ragged batch over a static KV cache, on a CPU, one layer per call.
 *
 * The padded layout (tree_batch.pack) gives every row of a batch the same number of fed slots and
 * the same key span: attention then pays for fillers and, per row, for the longest row's history.
 * Here only real fed tokens are given, grouped by row. For each row and key head, the kernel writes
 * the row's new keys and values into their cache slots, then reads that row's own history and tree
 * once for all the query heads of the group and all the row's fed tokens, in float32 throughout.
 *
 * Fed token t of row b, at fed offset i, sits in slot starts[b] + i and sees the row's history
 * (slots 0 .. starts[b] - 1) and the fed offsets j whose bit is set in sees[t] (its ancestors and
 * itself): the additive mask of tree_batch.pack, as bits. tests/decoder/test_ragged_attention.py
 * computes the rule in float64 and holds the kernel to it, and the ragged pass's logits to the
 * padded pass's. Each (row, key head) is one task; a row's tokens are all in its tasks, so threads
 * never write the same slots. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ragged_attention_api.h"

#define MAX_FED RAGGED_MAX_FED

#define MAX_LANES 16     /* floats of the widest vector below; head dimensions are whole such vectors */
#define MAX_HEAD_DIM 256

typedef void (*AttendTask)(const Layer *layer, int64_t first, int64_t count, int64_t kv_head, float *scores,
                           float *outputs);

/* The vector code, once per instruction set at its native width (ragged_attention_isa.h), with
 * reassociation allowed (pyproject.toml); the module picks one when it loads. */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#define ISA avx512
#define LANES 16
#define SUM_VECTORS 16
#include "ragged_attention_isa.h"
#undef ISA
#undef LANES
#undef SUM_VECTORS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA avx2
#define LANES 8
#define SUM_VECTORS 8
#include "ragged_attention_isa.h"
#undef ISA
#undef LANES
#undef SUM_VECTORS
#pragma GCC pop_options

#define ISA base /* SSE2, which every x86-64 has; elsewhere the compiler's generic vectors */
#define LANES 4
#define SUM_VECTORS 8
#include "ragged_attention_isa.h"
#undef ISA
#undef LANES
#undef SUM_VECTORS

static AttendTask attend_task = attend_task_base;
static const char *attend_isa = "base";

/* The widest set this CPU runs, or a narrower one named by CREST_ATTENTION_ISA (avx2, base), so that
 * tests run every set's code on one machine. */
static void choose_attend_task(void) {
    __builtin_cpu_init();
    const char *asked = getenv("CREST_ATTENTION_ISA");
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (asked != NULL && strcmp(asked, "base") == 0) return;
    if (avx512 && !(asked != NULL && strcmp(asked, "avx2") == 0)) {
        attend_task = attend_task_avx512;
        attend_isa = "avx512";
    } else if (avx2) {
        attend_task = attend_task_avx2;
        attend_isa = "avx2";
    }
}

/* Every row and key head of the layer, spread over the threads of the OpenMP runtime. Built with
 * -fopenmp, the extension shares the libgomp that torch loaded (same soname), so these are torch's
 * own intra-op threads, already warm between the products, not a second pool competing with them. */
static void attend_layer(const Layer *layer, const int64_t *runs, int64_t run_count, float *scores,
                         int64_t scores_per_thread, float *outputs, int64_t outputs_per_thread) {
    const int64_t tasks = run_count * layer->kv_heads;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; task++) {
#ifdef _OPENMP
        const int64_t thread = omp_get_thread_num();
#else
        const int64_t thread = 0;
#endif
        const int64_t run = task / layer->kv_heads, kv_head = task % layer->kv_heads;
        float *own_scores = scores + thread * scores_per_thread, *own_outputs = outputs + thread * outputs_per_thread;
        const int64_t first = runs[2 * run], count = runs[2 * run + 1];
        attend_task(layer, first, count, kv_head, own_scores, own_outputs);
    }
}

/* Rows must be given as runs of tokens, offsets and sees within the limits. -1 when they are not. */
static int check_plan(const Layer *layer) {
    for (int64_t t = 0; t < layer->tokens; t++) {
        const int64_t row = layer->row_of[t], offset = layer->offset_of[t];
        if (row < 0 || row >= layer->rows || offset < 0 || offset >= MAX_FED) return -1;
        /* The row's last slot is the cache's scratch slot (static_cache.py), never a fed one. */
        if (layer->starts[row] < 0 || layer->starts[row] + offset >= layer->slots - 1) return -1;
        if (!((layer->sees[t] >> offset) & 1)) return -1;           /* a token sees itself */
        if (layer->sees[t] >> offset >> 1) return -1;               /* and nothing fed after it */
        if (t > 0 && row != layer->row_of[t - 1])
            for (int64_t s = 0; s < t; s++)
                if (layer->row_of[s] == row) return -1;             /* a row's tokens are one run */
    }
    return 0;
}

/* ragged_attention_api.h's AttendPlan: the plan checked, each row's tokens as one run (first, count),
 * each thread's scratch for the longest run, and every row and key head attended. */
static int attend_plan(const Layer *layer) {
    if (check_plan(layer) != 0) return ATTEND_BAD_PLAN;
    if (layer->tokens == 0) return ATTEND_OK;
    int64_t *runs = malloc(2 * layer->tokens * sizeof(int64_t));
    if (runs == NULL) return ATTEND_NO_MEMORY;
    int64_t run_count = 0, widest_run = 0, widest_span = 0;
    for (int64_t first = 0; first < layer->tokens; run_count++) {
        int64_t count = 1;
        while (first + count < layer->tokens && layer->row_of[first + count] == layer->row_of[first]) count++;
        runs[2 * run_count] = first;
        runs[2 * run_count + 1] = count;
        widest_run = count > widest_run ? count : widest_run;
        first += count;
    }
    for (int64_t t = 0; t < layer->tokens; t++) {
        const int64_t span = layer->starts[layer->row_of[t]] + layer->offset_of[t] + 1;
        widest_span = span > widest_span ? span : widest_span;
    }
#ifdef _OPENMP
    const int64_t threads = omp_get_max_threads();
#else
    const int64_t threads = 1;
#endif
    const int64_t groups = layer->heads / layer->kv_heads;
    const int64_t scores_per_thread = widest_run * groups * (widest_span + MAX_LANES);
    const int64_t outputs_per_thread = widest_run * groups * layer->head_dim;
    float *scores = malloc(threads * scores_per_thread * sizeof(float));
    float *outputs = malloc(threads * outputs_per_thread * sizeof(float));
    int status = ATTEND_NO_MEMORY;
    if (scores != NULL && outputs != NULL) {
        attend_layer(layer, runs, run_count, scores, scores_per_thread, outputs, outputs_per_thread);
        status = ATTEND_OK;
    }
    free(runs);
    free(scores);
    free(outputs);
    return status;
}

static int get_buffer(PyObject *object, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t items, const char *name) {
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS) != 0) return -1;
    if (view->itemsize != itemsize || view->len != itemsize * items) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes", name, items, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* attend(query, query_stride, key, key_stride, value, value_stride, out, cache_keys, cache_values,
 *        row_of, offset_of, starts, sees, heads, kv_heads, head_dim, slots, scale)
 * Pointers are integer addresses of float32 memory laid out as described in Layer; row_of,
 * offset_of, starts (int64) and sees (uint64) are buffers. ragged_attention.py checks the tensors. */
static PyObject *attend(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 18) {
        PyErr_SetString(PyExc_TypeError, "attend takes 18 arguments");
        return NULL;
    }
    Layer layer;
    layer.query = PyLong_AsVoidPtr(args[0]);
    layer.query_stride = PyLong_AsLongLong(args[1]);
    layer.key = PyLong_AsVoidPtr(args[2]);
    layer.key_stride = PyLong_AsLongLong(args[3]);
    layer.value = PyLong_AsVoidPtr(args[4]);
    layer.value_stride = PyLong_AsLongLong(args[5]);
    layer.out = PyLong_AsVoidPtr(args[6]);
    layer.cache_keys = PyLong_AsVoidPtr(args[7]);
    layer.cache_values = PyLong_AsVoidPtr(args[8]);
    layer.heads = PyLong_AsLongLong(args[13]);
    layer.kv_heads = PyLong_AsLongLong(args[14]);
    layer.head_dim = PyLong_AsLongLong(args[15]);
    layer.slots = PyLong_AsLongLong(args[16]);
    layer.scale = (float)PyFloat_AsDouble(args[17]);
    if (PyErr_Occurred()) return NULL;
    if (layer.heads <= 0 || layer.kv_heads <= 0 || layer.heads % layer.kv_heads != 0 || layer.head_dim <= 0 ||
        layer.head_dim % MAX_LANES != 0 || layer.head_dim > MAX_HEAD_DIM || layer.slots <= 0) {
        PyErr_SetString(PyExc_ValueError,
                        "heads must be a multiple of kv_heads, head_dim a multiple of 16 up to 256, slots positive");
        return NULL;
    }
    /* Zeroed buffers release as nothing, so every exit below goes through `done`. */
    Py_buffer row_of = {0}, offset_of = {0}, starts = {0}, sees = {0};
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[9], &row_of, PyBUF_C_CONTIGUOUS) != 0) goto done;
    const Py_ssize_t tokens = row_of.len / (Py_ssize_t)sizeof(int64_t);
    const Py_ssize_t rows = PyObject_Length(args[11]);
    if (rows < 0) goto done;
    if (row_of.itemsize != sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "row_of: expected int64");
        goto done;
    }
    if (get_buffer(args[10], &offset_of, sizeof(int64_t), tokens, "offset_of") != 0 ||
        get_buffer(args[11], &starts, sizeof(int64_t), rows, "starts") != 0 ||
        get_buffer(args[12], &sees, sizeof(uint64_t), tokens, "sees") != 0)
        goto done;
    layer.row_of = row_of.buf;
    layer.offset_of = offset_of.buf;
    layer.starts = starts.buf;
    layer.sees = sees.buf;
    layer.tokens = tokens;
    layer.rows = rows;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = attend_plan(&layer);
    Py_END_ALLOW_THREADS
    if (status == ATTEND_BAD_PLAN) {
        PyErr_SetString(PyExc_ValueError,
                        "a ragged plan must give each row's tokens as one run, offsets within the row's free "
                        "slots and under 64, and each token seeing itself and no later offset");
        goto done;
    }
    if (status == ATTEND_NO_MEMORY) {
        result = PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&row_of);
    PyBuffer_Release(&offset_of);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&sees);
    return result;
}

/* keep_slots(keys, values, layers, rows, kv_heads, slots, row_bytes, moves): within the static
 * cache's [layers, rows, kv_heads, slots, head_dim] keys and values (integer addresses; row_bytes =
 * head_dim x element size), copy slot `source` to slot `target` of row `row` for every (row,
 * source, target) triple of the int64 buffer `moves`, in order, every layer and key head. The
 * accepted tokens of a tree move down to follow their history (static_cache.py: each target lies
 * below every later source, so in-order copies never overwrite what is still to move). */
static PyObject *keep_slots(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "keep_slots takes 8 arguments");
        return NULL;
    }
    char *keys = PyLong_AsVoidPtr(args[0]), *values = PyLong_AsVoidPtr(args[1]);
    const long long layers = PyLong_AsLongLong(args[2]), rows = PyLong_AsLongLong(args[3]);
    const long long kv_heads = PyLong_AsLongLong(args[4]), slots = PyLong_AsLongLong(args[5]);
    const long long row_bytes = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[7], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return NULL;
    const int64_t *moves = view.buf;
    const int64_t count = view.itemsize == 8 ? view.len / 24 : -1;
    int fits = keys != NULL && values != NULL && layers > 0 && rows > 0 && kv_heads > 0 && slots > 0 &&
               row_bytes > 0 && count >= 0 && view.len == count * 24;
    for (int64_t m = 0; fits && m < count; m++)
        fits = moves[3 * m] >= 0 && moves[3 * m] < rows && moves[3 * m + 1] >= 0 && moves[3 * m + 1] < slots &&
               moves[3 * m + 2] >= 0 && moves[3 * m + 2] < slots;
    if (!fits) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "keep_slots: a null address, a bad shape or a move outside the cache");
        return NULL;
    }
    const int64_t head_bytes = slots * row_bytes;
    for (int64_t layer = 0; layer < layers; layer++)
        for (int64_t m = 0; m < count; m++) {
            const int64_t row = moves[3 * m], source = moves[3 * m + 1], target = moves[3 * m + 2];
            for (int64_t head = 0; head < kv_heads; head++) {
                const int64_t at = ((layer * rows + row) * kv_heads + head) * head_bytes;
                memcpy(keys + at + target * row_bytes, keys + at + source * row_bytes, row_bytes);
                memcpy(values + at + target * row_bytes, values + at + source * row_bytes, row_bytes);
            }
        }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *instruction_set(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyUnicode_FromString(attend_isa);
}

static PyMethodDef methods[] = {
    {"attend", (PyCFunction)(void (*)(void))attend, METH_FASTCALL,
     "One layer's tree attention for a ragged batch of fed tokens over a static KV cache."},
    {"instruction_set", instruction_set, METH_NOARGS, "The instruction set whose attention code runs."},
    {"keep_slots", (PyCFunction)(void (*)(void))keep_slots, METH_FASTCALL,
     "Move accepted tokens' keys and values down to their rows' next slots."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_ragged_attention", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ragged_attention(void) {
    choose_attend_task();
    PyObject *module = PyModule_Create(&definition);
    if (module == NULL) return NULL;
    PyObject *capsule = PyCapsule_New((void *)attend_plan, ATTEND_PLAN_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(module, "attend_plan", capsule) != 0) {
        Py_XDECREF(capsule);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
