/* The decoder layers of one ragged pass (verification or prefill), float32 on a CPU, and the model's
 * final norm, in one call.
 *
 * From Python a layer of SmolLM2 is ~25 small torch operations and 4 calls into our kernels, and on
 * 2 cores their launches cost 2-3 ms a pass (benchmarks/pass_costs.py times both ways; perf showed
 * the second thread spinning in libgomp meanwhile). Here every layer runs in C: the norms, the rotation, the activation and the
 * residual adds as plain loops on the calling thread (they are small), the products through
 * panel_linear_kernel.c (or, for passes of up to `code_rows` tokens, q4_panel_kernel.c over the
 * model's Q4_1 codes: the same bits) and the attention through ragged_attention_kernel.c, each
 * reached through its capsule, on torch's OpenMP threads.
 *
 * Each operation rounds as its torch counterpart in llama_forward.py does (no contraction into fused
 * multiply-adds: -ffp-contract=off), with two exceptions: a norm's sum of squares runs in another
 * order, and the activation's exponential is a polynomial (within ~1 ulp of expf). Tests hold the
 * logits to the torch pass's and decoding to `generate`'s tokens. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "panel_linear_api.h"
#include "q4_panel_api.h"
#include "ragged_attention_api.h"

static MultiplyAll multiply_all = NULL;
static MultiplyQ4 multiply_q4 = NULL;
static AttendPlan attend_plan = NULL;

/* A product's weights: packed float32 panels (panel_linear.py) and, where the model has them, its
 * packed Q4_1 codes (q4_panels.py), which rebuild the same float32 weights. */
typedef struct {
    const float *panels;
    const uint8_t *codes; /* NULL: none */
} Product;

typedef struct {
    const float *input_norm, *post_norm;
    Product qkv, output, gate_up, down;
} LayerWeights;

/* y = x W^T, from the codes for up to `code_rows` rows of x (where reading the weights sets the time:
 * a sixth of the bytes), from the float32 panels beyond (where the arithmetic does, and the panel
 * kernel's is cheaper). The same bits either way. */
static void multiply(const Product *product, int64_t code_rows, const float *x, int64_t m, int64_t k, float *y,
                     int64_t n) {
    if (product->codes != NULL && m <= code_rows)
        multiply_q4(x, m, k, product->codes, y, n);
    else
        multiply_all(x, m, k, product->panels, y, n);
}

typedef struct {
    int64_t dim, heads, kv_heads, head_dim, inter;
    float eps, scale;
} Shape;

/* One chain of the attention: its tokens [first, first + tokens) and their plan (ragged_attention.py). */
typedef struct {
    int64_t first;
    Layer plan;
} Chain;

/* transformers' RMSNorm: x * (1 / sqrt(mean(x^2) + eps)) * weight, each product rounded. */
static void rms_norm(const float *x, const float *weight, float *y, int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++, x += dim, y += dim) {
        float partial[16] = {0};
        int64_t i = 0;
        for (; i + 16 <= dim; i += 16)
            for (int j = 0; j < 16; j++) partial[j] += x[i + j] * x[i + j];
        double sum = 0;
        for (int j = 0; j < 16; j++) sum += partial[j];
        for (; i < dim; i++) sum += (double)x[i] * x[i];
        const float inverse = 1.0f / sqrtf((float)(sum / (double)dim) + eps);
        for (i = 0; i < dim; i++) y[i] = (x[i] * inverse) * weight[i];
    }
}

/* The fed tokens' positions, and the rotary angles of every position up to the cache's capacity
 * ([positions, head_dim] each, computed once by torch's own rotary embedding: fused_layers.py). */
typedef struct {
    const int64_t *positions;
    const float *cos, *signed_sin;
} Angles;

/* The rotary embedding of the first `rotated` heads of each token, in place:
 * x * cos + rotate_half(x) * sin, as x * cos + roll(x, d / 2) * signed_sin (llama_forward._rotate). */
static void rotate(float *qkv, int64_t tokens, int64_t rotated, int64_t stride, int64_t head_dim,
                   const Angles *angles) {
    const int64_t half = head_dim / 2;
    float x[256]; /* head_dim <= 256 (run checks it, as ragged_attention.available does) */
    for (int64_t t = 0; t < tokens; t++) {
        const int64_t at = angles->positions[t] * head_dim;
        const float *c = angles->cos + at, *s = angles->signed_sin + at;
        for (int64_t h = 0; h < rotated; h++) {
            float *head = qkv + t * stride + h * head_dim;
            memcpy(x, head, head_dim * sizeof(float));
            for (int64_t i = 0; i < half; i++) head[i] = x[i] * c[i] + x[i + half] * s[i];
            for (int64_t i = half; i < head_dim; i++) head[i] = x[i] * c[i] + x[i - half] * s[i];
        }
    }
}

/* e^x: Cody-Waite reduction by ln 2 in two parts and a degree-6 polynomial on [-ln2/2, ln2/2],
 * branch-free so that the loop below vectorises; x clamped to where e^x is a normal float. */
static inline float exponential(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float power;
    memcpy(&power, &bits, sizeof power);
    return p * power;
}

/* The MLP's activation: silu(gate) * up for gate_up [rows, 2 * inter] = [gate | up], into act. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static void silu_times_up(const float *gate_up,
                                                                                       float *act, int64_t rows,
                                                                                       int64_t inter) {
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * inter, *up = gate + inter;
        float *out = act + r * inter;
        for (int64_t i = 0; i < inter; i++) out[i] = gate[i] / (1.0f + exponential(-gate[i])) * up[i];
    }
}

static void add_into(float *hidden, const float *delta, int64_t count) {
    for (int64_t i = 0; i < count; i++) hidden[i] = hidden[i] + delta[i];
}

/* Every layer over hidden [tokens, dim] in place, then the model's final norm: the last layer's output
 * part and the norm only for rows [tail, tokens) (a prefill needs only its last token's logits),
 * written at hidden + tail * dim. */
static int run_all(float *hidden, int64_t tokens, int64_t tail, const Angles *angles, const LayerWeights *layers,
                   int64_t layer_count, int64_t code_rows, const float *final_norm, const Shape *shape, float *cache_keys,
                   float *cache_values, int64_t layer_stride, Chain *chains, int64_t chain_count) {
    const int64_t dim = shape->dim, attended_width = shape->heads * shape->head_dim;
    const int64_t qkv_width = (shape->heads + 2 * shape->kv_heads) * shape->head_dim;
    float *scratch = malloc(tokens * (2 * dim + qkv_width + attended_width + 3 * shape->inter) * sizeof(float));
    if (scratch == NULL) return ATTEND_NO_MEMORY;
    float *normed = scratch, *delta = normed + tokens * dim, *qkv = delta + tokens * dim;
    float *attended = qkv + tokens * qkv_width, *gate_up = attended + tokens * attended_width;
    float *act = gate_up + tokens * 2 * shape->inter;
    int status = ATTEND_OK;
    for (int64_t index = 0; index < layer_count && status == ATTEND_OK; index++) {
        const LayerWeights *weights = layers + index;
        rms_norm(hidden, weights->input_norm, normed, tokens, dim, shape->eps);
        multiply(&weights->qkv, code_rows, normed, tokens, dim, qkv, qkv_width);
        rotate(qkv, tokens, shape->heads + shape->kv_heads, qkv_width, shape->head_dim, angles);
        for (int64_t c = 0; c < chain_count && status == ATTEND_OK; c++) {
            Layer plan = chains[c].plan;
            const float *query = qkv + chains[c].first * qkv_width;
            plan.query = query;
            plan.key = query + shape->heads * shape->head_dim;
            plan.value = query + (shape->heads + shape->kv_heads) * shape->head_dim;
            plan.query_stride = plan.key_stride = plan.value_stride = qkv_width;
            plan.out = attended + chains[c].first * attended_width;
            plan.cache_keys = cache_keys + index * layer_stride;
            plan.cache_values = cache_values + index * layer_stride;
            status = attend_plan(&plan);
        }
        const int64_t first = index == layer_count - 1 ? tail : 0, rows = tokens - first;
        float *stream = hidden + first * dim;
        multiply(&weights->output, code_rows, attended + first * attended_width, rows, attended_width, delta, dim);
        add_into(stream, delta, rows * dim);
        rms_norm(stream, weights->post_norm, normed, rows, dim, shape->eps);
        multiply(&weights->gate_up, code_rows, normed, rows, dim, gate_up, 2 * shape->inter);
        silu_times_up(gate_up, act, rows, shape->inter);
        multiply(&weights->down, code_rows, act, rows, shape->inter, delta, dim);
        add_into(stream, delta, rows * dim);
    }
    if (status == ATTEND_OK) rms_norm(hidden + tail * dim, final_norm, hidden + tail * dim, tokens - tail, dim, shape->eps);
    free(scratch);
    return status;
}

static int as_pointers(PyObject *sequence, const float **pointers, Py_ssize_t count, const char *what) {
    if (!PyTuple_Check(sequence) || PyTuple_GET_SIZE(sequence) != count) {
        PyErr_Format(PyExc_ValueError, "%s: expected a tuple of %zd addresses", what, count);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        pointers[i] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(sequence, i));
        if (pointers[i] == NULL) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s: a null address", what);
            return -1;
        }
    }
    return 0;
}

/* The buffers of one chain (row_of, offset_of, starts, sees) into its plan; 4 views to release. */
static int chain_plan(PyObject *chain, Py_buffer *views, Layer *plan) {
    if (!PyTuple_Check(chain) || PyTuple_GET_SIZE(chain) != 4) {
        PyErr_SetString(PyExc_ValueError, "a chain is (row_of, offset_of, starts, sees)");
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(chain, i), views + i, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0)
            return -1;
        if (views[i].itemsize != 8) {
            PyErr_SetString(PyExc_ValueError, "a chain's arrays hold 64-bit integers");
            return -1;
        }
    }
    plan->tokens = views[0].len / 8;
    plan->rows = views[2].len / 8;
    if (views[1].len / 8 != plan->tokens || views[3].len / 8 != plan->tokens) {
        PyErr_SetString(PyExc_ValueError, "a chain's row_of, offset_of and sees have one entry a token");
        return -1;
    }
    plan->row_of = views[0].buf;
    plan->offset_of = views[1].buf;
    plan->starts = views[2].buf;
    plan->sees = views[3].buf;
    return 0;
}

/* run(hidden, ids, positions, tail, embedding, vocab, cos, signed_sin, table_positions, layers, shape,
 *     eps, scale, cache_keys, cache_values, layer_stride, slots, chains, final_norm): the fed tokens'
 * ids and positions are int64 buffers; hidden is the integer address of a float32 [tokens, dim] to
 * fill (it is written with the token's embedding rows, then holds the stream), embedding the
 * address of [vocab, dim], cos and signed_sin those of the angle tables [table_positions, head_dim];
 * layers a tuple of a tuple of 6 addresses a layer (LayerWeights), final_norm the address of the
 * model's last norm weight [dim]; shape (dim, heads, kv_heads, head_dim, inter); cache_keys /
 * cache_values the addresses of the cache's [layers, rows, kv_heads, slots, head_dim], layer_stride
 * its floats a layer; chains a tuple of (row_of, offset_of, starts, sees) arrays, their tokens one
 * after the other. fused_layers.py checks the tensors behind the addresses; ids and positions are
 * checked here against vocab and table_positions. */
enum { RUN_ARGUMENTS = 20 };

static PyObject *run(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != RUN_ARGUMENTS) {
        PyErr_SetString(PyExc_TypeError, "run takes 20 arguments");
        return NULL;
    }
    if (multiply_all == NULL || attend_plan == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "run: the panel or the ragged attention kernel does not run here");
        return NULL;
    }
    Py_buffer given[2] = {{0}};
    for (int i = 0; i < 2; i++)
        if (PyObject_GetBuffer(args[1 + i], given + i, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0 || given[i].itemsize != 8) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "run: ids and positions hold 64-bit integers");
            for (int j = 0; j <= i; j++) PyBuffer_Release(given + j);
            return NULL;
        }
    const int64_t *ids = given[0].buf, *positions = given[1].buf;
    const int64_t tokens = given[0].len / 8, tail = PyLong_AsLongLong(args[3]);
    float *hidden = PyLong_AsVoidPtr(args[0]);
    const float *embedding = PyLong_AsVoidPtr(args[4]);
    const int64_t vocab = PyLong_AsLongLong(args[5]);
    const Angles angles = {positions, PyLong_AsVoidPtr(args[6]), PyLong_AsVoidPtr(args[7])};
    const int64_t table_positions = PyLong_AsLongLong(args[8]);
    long long dims[5] = {0};
    if (!PyErr_Occurred()) PyArg_ParseTuple(args[10], "LLLLL", dims, dims + 1, dims + 2, dims + 3, dims + 4);
    Shape shape = {.dim = dims[0], .heads = dims[1], .kv_heads = dims[2], .head_dim = dims[3], .inter = dims[4]};
    shape.eps = (float)PyFloat_AsDouble(args[11]);
    shape.scale = (float)PyFloat_AsDouble(args[12]);
    float *cache_keys = PyLong_AsVoidPtr(args[13]), *cache_values = PyLong_AsVoidPtr(args[14]);
    const int64_t layer_stride = PyLong_AsLongLong(args[15]), slots = PyLong_AsLongLong(args[16]);
    const float *final_norm = PyLong_AsVoidPtr(args[18]);
    const int64_t code_rows = PyLong_AsLongLong(args[19]); /* rows up to which the products read codes */
    int fits = !PyErr_Occurred() && given[1].len == given[0].len;
    for (int64_t t = 0; fits && t < tokens; t++)
        fits = ids[t] >= 0 && ids[t] < vocab && positions[t] >= 0 && positions[t] < table_positions;
    if (PyErr_Occurred() || !fits || tokens <= 0 || tail < 0 || tail >= tokens || hidden == NULL ||
        embedding == NULL || angles.cos == NULL || angles.signed_sin == NULL || final_norm == NULL ||
        cache_keys == NULL || cache_values == NULL || shape.dim <= 0 || shape.heads <= 0 || shape.kv_heads <= 0 ||
        shape.heads % shape.kv_heads != 0 || shape.head_dim <= 0 || shape.head_dim > 256 || shape.head_dim % 16 ||
        shape.inter <= 0 || layer_stride <= 0 || slots <= 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "run: a pass's ids, positions, shapes, addresses or tail out of range");
        PyBuffer_Release(given);
        PyBuffer_Release(given + 1);
        return NULL;
    }
    if (!PyTuple_Check(args[9]) || !PyTuple_Check(args[17])) {
        PyErr_SetString(PyExc_TypeError, "run: layers and chains are tuples");
        PyBuffer_Release(given);
        PyBuffer_Release(given + 1);
        return NULL;
    }
    const Py_ssize_t layer_count = PyTuple_GET_SIZE(args[9]), chain_count = PyTuple_GET_SIZE(args[17]);
    LayerWeights *layers = PyMem_Calloc(layer_count ? layer_count : 1, sizeof(LayerWeights));
    Chain *chains = PyMem_Calloc(chain_count ? chain_count : 1, sizeof(Chain));
    Py_buffer *views = PyMem_Calloc(4 * (chain_count ? chain_count : 1), sizeof(Py_buffer)); /* zeroed: release as nothing */
    PyObject *result = NULL;
    if (layers == NULL || chains == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < layer_count; i++) {
        /* the norms and the four products' panels, then (where the model has them) the products' codes */
        const float *weights[10] = {NULL};
        PyObject *given_weights = PyTuple_GET_ITEM(args[9], i);
        const Py_ssize_t count = PyTuple_Check(given_weights) && PyTuple_GET_SIZE(given_weights) == 10 ? 10 : 6;
        if (as_pointers(given_weights, weights, count, "a layer's weights") != 0) goto done;
        if (count == 10 && multiply_q4 == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "run: the Q4_1 panel kernel does not run here");
            goto done;
        }
        const uint8_t *codes[4];
        for (int c = 0; c < 4; c++) codes[c] = (const uint8_t *)weights[6 + c]; /* NULL where none */
        layers[i] = (LayerWeights){weights[0], weights[3], {weights[1], codes[0]}, {weights[2], codes[1]},
                                   {weights[4], codes[2]}, {weights[5], codes[3]}};
    }
    int64_t fed = 0;
    for (Py_ssize_t c = 0; c < chain_count; c++) {
        Layer *plan = &chains[c].plan;
        if (chain_plan(PyTuple_GET_ITEM(args[17], c), views + 4 * c, plan) != 0) goto done;
        plan->heads = shape.heads;
        plan->kv_heads = shape.kv_heads;
        plan->head_dim = shape.head_dim;
        plan->slots = slots;
        plan->scale = shape.scale;
        chains[c].first = fed;
        fed += plan->tokens;
    }
    if (fed != tokens) {
        PyErr_SetString(PyExc_ValueError, "run: the chains' tokens are not the pass's");
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t t = 0; t < tokens; t++)
        memcpy(hidden + t * shape.dim, embedding + ids[t] * shape.dim, shape.dim * sizeof(float));
    status = run_all(hidden, tokens, tail, &angles, layers, layer_count, code_rows, final_norm, &shape, cache_keys,
                     cache_values, layer_stride, chains, chain_count);
    Py_END_ALLOW_THREADS
    if (status == ATTEND_BAD_PLAN)
        PyErr_SetString(PyExc_ValueError, "run: a chain's plan is out of the attention kernel's limits");
    else if (status == ATTEND_NO_MEMORY)
        PyErr_NoMemory();
    else
        result = Py_NewRef(Py_None);
done:
    if (views != NULL)
        for (Py_ssize_t i = 0; i < 4 * chain_count; i++) PyBuffer_Release(views + i);
    PyMem_Free(views);
    PyMem_Free(chains);
    PyMem_Free(layers);
    PyBuffer_Release(given);
    PyBuffer_Release(given + 1);
    return result;
}

enum { ARGMAX_BLOCK = 256, GREEDY_ROWS_PER_THREAD = 4 };

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef float v16_unaligned __attribute__((vector_size(64), aligned(4), may_alias));

/* The index of the first largest value of x[0..count), a NaN counting as the largest (torch.argmax's
 * rule). Each block's maximum in vector code (a lane keeps its value unless a later one is larger,
 * so no NaN enters the maxima: they are looked for alongside), then the first block holding the
 * largest, then its first index holding it: a vocabulary-wide row costs about one vector pass. */
__attribute__((target_clones("avx512f", "avx2", "default"))) static int64_t first_largest(const float *x,
                                                                                          int64_t count) {
    float largest = x[0];
    int64_t block_of_largest = 0;
    i16 nan = {0};
    int any_nan = 0;
    for (int64_t start = 0; start < count; start += ARGMAX_BLOCK) {
        const int64_t end = start + ARGMAX_BLOCK < count ? start + ARGMAX_BLOCK : count;
        float block = x[start];
        int64_t i = start;
        if (i + 16 <= end) {
            v16 lanes = *(const v16_unaligned *)(x + i);
            nan |= lanes != lanes;
            for (i += 16; i + 16 <= end; i += 16) {
                const v16 v = *(const v16_unaligned *)(x + i);
                const i16 larger = v > lanes;
                lanes = (v16)(((i16)v & larger) | ((i16)lanes & ~larger));
                nan |= v != v;
            }
            for (int j = 0; j < 16; j++) block = lanes[j] > block ? lanes[j] : block;
        }
        for (; i < end; i++) {
            block = x[i] > block ? x[i] : block;
            any_nan |= x[i] != x[i];
        }
        if (block > largest) {
            largest = block;
            block_of_largest = start;
        }
    }
    for (int j = 0; j < 16; j++) any_nan |= nan[j] != 0;
    if (any_nan) {
        for (int64_t i = 0; i < count; i++)
            if (x[i] != x[i]) return i;
    }
    for (int64_t i = block_of_largest; i < count; i++)
        if (x[i] == largest) return i;
    return 0; /* not reached: the largest value is one of x */
}

/* greedy(logits, rows, vocab) -> list of each row's argmax (first_largest); logits: the integer
 * address of float32 [rows, vocab], which fused_layers.py checks. The greedy verdicts of a pass
 * without torch's argmax, .tolist() and their dispatch, which cost ~0.1 ms between passes. */
static PyObject *greedy(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "greedy takes 3 arguments");
        return NULL;
    }
    const float *logits = PyLong_AsVoidPtr(args[0]);
    const int64_t rows = PyLong_AsLongLong(args[1]), vocab = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if ((logits == NULL && rows > 0) || rows < 0 || vocab <= 0) {
        PyErr_SetString(PyExc_ValueError, "greedy: a null address or an empty vocabulary");
        return NULL;
    }
    int64_t *chosen = PyMem_Malloc((rows ? rows : 1) * sizeof(int64_t));
    if (chosen == NULL) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    /* Rows on torch's OpenMP threads (the products' own, warm): a batch's rows read ~6 MB of logits. */
#pragma omp parallel for schedule(static) if (rows >= GREEDY_ROWS_PER_THREAD * 2)
    for (int64_t r = 0; r < rows; r++) chosen[r] = first_largest(logits + r * vocab, vocab);
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New(rows);
    for (int64_t r = 0; list != NULL && r < rows; r++) {
        PyObject *item = PyLong_FromLongLong(chosen[r]);
        if (item == NULL) Py_CLEAR(list);
        else PyList_SET_ITEM(list, r, item);
    }
    PyMem_Free(chosen);
    return list;
}

/* Whether both kernels this one calls run here (each exports its capsule only then). */
static PyObject *available(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyBool_FromLong(multiply_all != NULL && attend_plan != NULL);
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL, "Every decoder layer of one ragged float32 pass, and the final norm."},
    {"greedy", (PyCFunction)(void (*)(void))greedy, METH_FASTCALL, "Each row's argmax, as torch.argmax takes it."},
    {"available", available, METH_NOARGS, "Whether the products' and the attention's kernels run here."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_fused_layers", NULL, -1, methods};

/* The two kernels' functions, or NULL where a module or its capsule is missing (then `available`
 * says False and the torch layers run). */
static void *imported(const char *module, const char *capsule) {
    PyObject *loaded = PyImport_ImportModule(module); /* PyCapsule_Import finds only loaded submodules */
    void *pointer = loaded == NULL ? NULL : PyCapsule_Import(capsule, 0);
    Py_XDECREF(loaded);
    if (pointer == NULL) PyErr_Clear();
    return pointer;
}

PyMODINIT_FUNC PyInit__fused_layers(void) {
    multiply_all = (MultiplyAll)imported("decoder._panel_linear", MULTIPLY_ALL_CAPSULE);
    multiply_q4 = (MultiplyQ4)imported("decoder._q4_panel", MULTIPLY_Q4_CAPSULE);
    attend_plan = (AttendPlan)imported("decoder._ragged_attention", ATTEND_PLAN_CAPSULE);
    return PyModule_Create(&definition);
}
