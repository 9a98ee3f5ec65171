/* Greedy tokens from a pass's final hidden states, reading half of the float32 head's bytes.
 *
 * A one-token pass reads every weight once, and the head (vocab x dim floats) is a fifth of them on
 * SmolLM2. Greedy verification needs only each row's largest logit, so the head is read here as a
 * bfloat16 copy (half the bytes; AVX512-BF16 multiplies two pairs of them per float32 lane), and a
 * proven bound on how far that approximation can lie from the float32 logit leaves only the tokens
 * that may still be the largest. Those, usually 1-20 of 49,152, are then computed in float32 from
 * the model's own weights, and the largest of them is the answer: the argmax of float32 logits.
 *
 * The bound, for hidden row h (A = |h|_1, h' = h rounded to bfloat16, B = |h - h'|_1) and token v
 * (e_v: the largest |w - w'| of its row rounded to bfloat16, m_v: its largest |w| or |w'|):
 *   |approx_v - exact_v| <= e_v A + m_v B + (the two float32 sums' rounding, each under
 *   576 x 2^-24 x m_v x A for SmolLM2, under 2^-14 m_v A) <= M_v = e_v A + m_v (B + 2^-10 A),
 * computed with 0.1% to spare, plus 1e-6 (the instruction flushes subnormal terms to zero). With
 * L = max_v (approx_v - M_v), reached at u: exact_u >= L, and every token with approx_v + M_v < L has
 * exact_v < L <= exact_u, so it is not the argmax; the others are the candidates. Among them the
 * first largest wins, torch.argmax's rule. A row that is not finite takes every token in float32,
 * with torch's rule for NaN (the first NaN). tests/decoder/test_screened_head.py holds this to the
 * argmax of full float32 logits. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TILE 16        /* tokens per tile of the bfloat16 copy: one vector of float32 sums */
#define ROW_BLOCK 12   /* hidden rows that share a tile's loads (two sums each in registers) */
#define MAX_DIM 4096

/* Round to bfloat16 (to nearest, ties to even), subnormals flushed as the instruction reads them. */
static uint16_t to_bfloat16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    if ((bits & 0x7f800000u) == 0) return (uint16_t)((bits >> 16) & 0x8000u);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static float from_bfloat16(uint16_t half) {
    const uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

/* A float32 logit as the candidates' is computed: one fixed order, so that the same token always
 * gets the same value. dim is a multiple of 16. */
__attribute__((target("avx512f"))) static float exact_logit(const float *weight, const float *hidden, int64_t dim) {
    __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(weight), _mm512_loadu_ps(hidden));
    for (int64_t d = 16; d < dim; d += 16)
        sum = _mm512_fmadd_ps(_mm512_loadu_ps(weight + d), _mm512_loadu_ps(hidden + d), sum);
    return _mm512_reduce_add_ps(sum);
}

/* Every token in float32, torch.argmax's rule: the first NaN, else the first largest. */
__attribute__((target("avx512f"))) static int64_t exact_argmax(const float *weight, const float *hidden,
                                                              int64_t vocab, int64_t dim) {
    int64_t best = 0;
    float top = -INFINITY;
    for (int64_t v = 0; v < vocab; v++) {
        const float logit = exact_logit(weight + v * dim, hidden, dim);
        if (isnan(logit)) return v;
        if (logit > top || v == 0) top = logit, best = v;
    }
    return best;
}

/* Approximate logits of rows [first, first + count) (count <= ROW_BLOCK) for one tile of tokens:
 * the tile holds, per pair of dimensions j, 16 tokens' two bfloat16 weights (32 x 16 bits), and each
 * row's pair j is broadcast against it. Two sums per row, even and odd pairs, so that consecutive
 * multiply-adds do not wait on each other. */
__attribute__((target("avx512f,avx512bf16"))) static void tile_logits(const uint32_t *tile, const uint32_t *pairs,
                                                                     int64_t count, int64_t half_dim, float *out,
                                                                     int64_t out_stride) {
    __m512 even[ROW_BLOCK], odd[ROW_BLOCK];
    for (int64_t r = 0; r < ROW_BLOCK; r++) even[r] = odd[r] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 1 < half_dim; j += 2) {
        const __m512bh first = (__m512bh)_mm512_loadu_si512(tile + j * TILE);
        const __m512bh second = (__m512bh)_mm512_loadu_si512(tile + (j + 1) * TILE);
        for (int64_t r = 0; r < ROW_BLOCK; r++)
            if (r < count) {
                even[r] = _mm512_dpbf16_ps(even[r], first, (__m512bh)_mm512_set1_epi32((int)pairs[r * half_dim + j]));
                odd[r] = _mm512_dpbf16_ps(odd[r], second, (__m512bh)_mm512_set1_epi32((int)pairs[r * half_dim + j + 1]));
            }
    }
    if (j < half_dim) {
        const __m512bh last = (__m512bh)_mm512_loadu_si512(tile + j * TILE);
        for (int64_t r = 0; r < ROW_BLOCK; r++)
            if (r < count)
                even[r] = _mm512_dpbf16_ps(even[r], last, (__m512bh)_mm512_set1_epi32((int)pairs[r * half_dim + j]));
    }
    for (int64_t r = 0; r < ROW_BLOCK; r++)
        if (r < count) _mm512_storeu_ps(out + r * out_stride, _mm512_add_ps(even[r], odd[r]));
}

typedef struct {
    const uint32_t *tiles;  /* [tiles, dim / 2, TILE] pairs of bfloat16 weights */
    const float *error;     /* e_v per token (padded tokens: 0) */
    const float *largest;   /* m_v per token */
    const float *weight;    /* the float32 head, [vocab, dim] */
    int64_t vocab, padded_vocab, dim;
} Head;

/* One row's answer from its approximate logits: the candidates' float32 logits, the first largest. */
__attribute__((target("avx512f"))) static int64_t screened_argmax(const Head *head, const float *hidden,
                                                                 const float *approx, double l1, double rounding) {
    const float a = (float)l1 * 1.001f, b = (float)(rounding + l1 / 1024.0) * 1.001f;
    __m512 lowest = _mm512_set1_ps(-INFINITY);
    for (int64_t v = 0; v < head->padded_vocab; v += TILE) {
        const __m512 margin = _mm512_fmadd_ps(_mm512_loadu_ps(head->error + v), _mm512_set1_ps(a),
                                              _mm512_fmadd_ps(_mm512_loadu_ps(head->largest + v), _mm512_set1_ps(b),
                                                              _mm512_set1_ps(1e-6f)));
        lowest = _mm512_max_ps(lowest, _mm512_sub_ps(_mm512_loadu_ps(approx + v), margin));
    }
    const float floor = _mm512_reduce_max_ps(lowest);
    if (!isfinite(floor)) return exact_argmax(head->weight, hidden, head->vocab, head->dim);
    int64_t best = -1;
    float top = -INFINITY;
    for (int64_t v = 0; v < head->padded_vocab; v += TILE) {
        const __m512 margin = _mm512_fmadd_ps(_mm512_loadu_ps(head->error + v), _mm512_set1_ps(a),
                                              _mm512_fmadd_ps(_mm512_loadu_ps(head->largest + v), _mm512_set1_ps(b),
                                                              _mm512_set1_ps(1e-6f)));
        __mmask16 maybe = _mm512_cmp_ps_mask(_mm512_add_ps(_mm512_loadu_ps(approx + v), margin), _mm512_set1_ps(floor),
                                             _CMP_GE_OQ);
        for (; maybe; maybe &= maybe - 1) {
            const int64_t token = v + __builtin_ctz(maybe);
            if (token >= head->vocab) break;
            const float logit = exact_logit(head->weight + token * head->dim, hidden, head->dim);
            if (isnan(logit)) return exact_argmax(head->weight, hidden, head->vocab, head->dim);
            if (best < 0 || logit > top) top = logit, best = token;
        }
    }
    return best >= 0 ? best : exact_argmax(head->weight, hidden, head->vocab, head->dim);
}

/* Each row's greedy token into chosen[rows]; `approx` is scratch of rows x padded_vocab floats and
 * `pairs` of rows x dim / 2. */
static void screened_tokens(const Head *head, const float *hidden, int64_t rows, float *approx, uint32_t *pairs,
                            double *l1, double *rounding, int64_t *chosen) {
    const int64_t dim = head->dim, half_dim = dim / 2, tiles = head->padded_vocab / TILE;
    for (int64_t r = 0; r < rows; r++) {
        double total = 0.0, lost = 0.0;
        for (int64_t d = 0; d < dim; d++) {
            const float value = hidden[r * dim + d];
            const uint16_t half = to_bfloat16(value);
            total += fabs((double)value);
            lost += fabs((double)value - (double)from_bfloat16(half));
            if (d % 2 == 0) pairs[r * half_dim + d / 2] = half;
            else pairs[r * half_dim + d / 2] |= (uint32_t)half << 16;
        }
        /* Past 1e30 the products could overflow: such a row takes every token in float32. */
        l1[r] = total < 1e30 ? total : INFINITY, rounding[r] = lost;
    }
    /* Rows in blocks of equal size (13 rows as 7 + 6, not 12 + 1: a block's sums are its parallel chains). */
    const int64_t blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK, block = (rows + blocks - 1) / blocks;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t first = 0; first < rows; first += block)
            tile_logits(head->tiles + t * half_dim * TILE, pairs + first * half_dim,
                        rows - first < block ? rows - first : block, half_dim,
                        approx + first * head->padded_vocab + t * TILE, head->padded_vocab);
#pragma omp parallel for schedule(static) if (rows >= 4)
    for (int64_t r = 0; r < rows; r++)
        chosen[r] = isfinite(l1[r]) ? screened_argmax(head, hidden + r * dim, approx + r * head->padded_vocab, l1[r],
                                                      rounding[r])
                                    : exact_argmax(head->weight, hidden + r * dim, head->vocab, dim);
}

static int get_buffer(PyObject *object, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t least, const char *name) {
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0) return -1;
    if (view->itemsize != itemsize || view->len < itemsize * least) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items of %zd bytes", name, least, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* tokens(hidden, rows, tiles, error, largest, weight, vocab, padded_vocab, dim, approx, pairs):
 * hidden and weight are integer addresses of float32 [rows, dim] and [vocab, dim]; tiles (uint32),
 * error and largest (float32) and the scratch approx (float32) and pairs (uint32) are buffers.
 * screened_head.py checks the tensors. A list of each row's token. */
static PyObject *tokens(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "tokens takes 11 arguments");
        return NULL;
    }
    const float *hidden = PyLong_AsVoidPtr(args[0]);
    const int64_t rows = PyLong_AsLongLong(args[1]);
    Head head;
    head.weight = PyLong_AsVoidPtr(args[5]);
    head.vocab = PyLong_AsLongLong(args[6]);
    head.padded_vocab = PyLong_AsLongLong(args[7]);
    head.dim = PyLong_AsLongLong(args[8]);
    if (PyErr_Occurred()) return NULL;
    if (hidden == NULL || head.weight == NULL || rows <= 0 || head.vocab <= 0 || head.dim <= 0 || head.dim % 16 != 0 ||
        head.dim > MAX_DIM || head.padded_vocab % TILE != 0 || head.padded_vocab < head.vocab ||
        head.padded_vocab - head.vocab >= TILE) {
        PyErr_SetString(PyExc_ValueError, "tokens: a null address, no rows, or shapes the kernel does not take");
        return NULL;
    }
    Py_buffer tiles = {0}, error = {0}, largest = {0}, approx = {0}, pairs = {0};
    PyObject *result = NULL;
    int64_t *chosen = NULL;
    double *sums = NULL;
    if (get_buffer(args[2], &tiles, 4, head.padded_vocab * head.dim / 2, "tiles") != 0 ||
        get_buffer(args[3], &error, 4, head.padded_vocab, "error") != 0 ||
        get_buffer(args[4], &largest, 4, head.padded_vocab, "largest") != 0 ||
        get_buffer(args[9], &approx, 4, rows * head.padded_vocab, "approx") != 0 ||
        get_buffer(args[10], &pairs, 4, rows * head.dim / 2, "pairs") != 0)
        goto done;
    head.tiles = tiles.buf;
    head.error = error.buf;
    head.largest = largest.buf;
    chosen = PyMem_Malloc(rows * sizeof(int64_t));
    sums = PyMem_Malloc(2 * rows * sizeof(double));
    if (chosen == NULL || sums == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    screened_tokens(&head, hidden, rows, approx.buf, pairs.buf, sums, sums + rows, chosen);
    Py_END_ALLOW_THREADS
    result = PyList_New(rows);
    for (int64_t r = 0; result != NULL && r < rows; r++) {
        PyObject *item = PyLong_FromLongLong(chosen[r]);
        if (item == NULL) Py_CLEAR(result);
        else PyList_SET_ITEM(result, r, item);
    }
done:
    PyMem_Free(chosen);
    PyMem_Free(sums);
    PyBuffer_Release(&tiles);
    PyBuffer_Release(&error);
    PyBuffer_Release(&largest);
    PyBuffer_Release(&approx);
    PyBuffer_Release(&pairs);
    return result;
}

/* Whether this CPU multiplies bfloat16 pairs (AVX512-BF16); the module is useless elsewhere. */
static PyObject *available(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    __builtin_cpu_init();
    return PyBool_FromLong(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"));
}

static PyMethodDef methods[] = {
    {"tokens", (PyCFunction)(void (*)(void))tokens, METH_FASTCALL,
     "Each hidden row's greedy token, screened through the bfloat16 head."},
    {"available", available, METH_NOARGS, "Whether this CPU runs the kernel (AVX512-BF16)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_screened_head", NULL, -1, methods};

PyMODINIT_FUNC PyInit__screened_head(void) { return PyModule_Create(&definition); }
