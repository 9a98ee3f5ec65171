/* Greedy tokens from a pass's final hidden states, reading half of the float32 head's bytes.
 *
 * A one-token pass reads every weight once, and the head (vocab x dim floats) is a fifth of them on
 * SmolLM2. Greedy verification needs only each row's largest logit, so the head is read here as a
 * bfloat16 copy (half the bytes, widened to float32 in registers), and a proven bound on how far
 * that approximation can lie from the float32 logit leaves only the tokens that may still be the
 * largest. Those, usually 1-20 of 49,152, are then computed in float32 from the model's own weights,
 * and the largest of them is the answer: the argmax of float32 logits.
 *
 * The bound, for hidden row h (A = |h|_1) and token v (e_v: the largest |w - w'| of its row rounded
 * to bfloat16, m_v: its largest |w| or |w'|): approx_v sums the exact products w' x h in float32,
 *   |approx_v - exact_v| <= e_v A + (the two float32 sums' rounding, each under 576 x 2^-24 x m_v x A
 *   for SmolLM2, under 2^-14 m_v A) <= M_v = e_v A + 2^-10 m_v A,
 * computed with 0.1% to spare, plus 1e-6 (for subnormal terms a flush-to-zero mode would drop). With
 * L = max_v (approx_v - M_v) over the vocabulary's tokens (never the padding's), reached at u:
 * exact_u >= L, and every token with approx_v + M_v < L has exact_v < L <= exact_u, so it is not the
 * argmax; the others are the candidates. Among them the first largest wins, torch.argmax's rule. A
 * row that is not finite, or too large for the bound's sums, takes every token in float32, with
 * torch's rule for NaN (the first NaN). tests/decoder/test_screened_head.py holds this to the argmax
 * of full float32 logits. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TILE 16        /* tokens per tile of the bfloat16 copy: one vector of float32 sums */
#define ROW_BLOCK 12   /* hidden rows that share a tile's loads (two sums each in registers) */
#define MAX_DIM 4096
#define PREFETCH_LINES 64 /* how far ahead the tiles are read (lines of 16 pairs): the prefetcher alone
                           * left a thread at ~13 GB/s once rows made it compute as well */
#define LARGEST_ROW 1e28 /* |h|_1 beyond: every token in float32 (with weights under 1e6, no sum overflows) */

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

typedef struct {
    const uint32_t *tiles;  /* [tiles, dim / 2, TILE] pairs of bfloat16 weights */
    const float *error;     /* e_v per token (padded tokens: 0) */
    const float *largest;   /* m_v per token */
    const float *weight;    /* the float32 head, [vocab, dim] */
    int64_t vocab, padded_vocab, dim;
} Head;

/* What a row's bound multiplies e_v and m_v by (A and 2^-10 A, with 0.1% to spare). */
typedef struct {
    float by_error, by_largest;
} Scale;

/* Rows [first, first + count) (count <= ROW_BLOCK) against tile t: the approximate logits, from the
 * tile's pairs of dimensions (16 tokens' two bfloat16 weights as 32-bit lanes, widened to float32 by
 * shifts, each multiplied by the row's float32 value of that dimension: two sums per row, so that
 * consecutive multiply-adds do not wait on each other); then each token's upper end (approx + M)
 * stored in `upper`, and the lower end (approx - M) raising the row's running maximum in `lowest`.
 * Padded tokens take -inf at both. (Widened by shifts, the copy runs on any AVX-512 CPU.) */
static inline __attribute__((always_inline, target("avx512f"))) void tile_bounds(
    const Head *head, int64_t t, const float *hidden, const Scale *scales, const int64_t count, float *upper,
    __m512 *lowest) {
    const int64_t dim = head->dim, half_dim = dim / 2, token = t * TILE;
    const uint32_t *tile = head->tiles + t * half_dim * TILE;
    const __m512i high_half = _mm512_set1_epi32((int)0xffff0000u);
    __m512 even[ROW_BLOCK], odd[ROW_BLOCK];
    for (int64_t r = 0; r < ROW_BLOCK; r++) even[r] = odd[r] = _mm512_setzero_ps();
    for (int64_t j = 0; j < half_dim; j++) {
        _mm_prefetch((const char *)(tile + (j + PREFETCH_LINES) * TILE), _MM_HINT_T0);
        const __m512i pair = _mm512_loadu_si512(tile + j * TILE);
        const __m512 first = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
        const __m512 second = _mm512_castsi512_ps(_mm512_and_si512(pair, high_half));
        for (int64_t r = 0; r < ROW_BLOCK; r++)
            if (r < count) {
                even[r] = _mm512_fmadd_ps(first, _mm512_set1_ps(hidden[r * dim + 2 * j]), even[r]);
                odd[r] = _mm512_fmadd_ps(second, _mm512_set1_ps(hidden[r * dim + 2 * j + 1]), odd[r]);
            }
    }
    const __mmask16 real = head->vocab - token >= TILE ? 0xffff : (__mmask16)((1u << (head->vocab - token)) - 1);
    const __m512 error = _mm512_loadu_ps(head->error + token), largest = _mm512_loadu_ps(head->largest + token);
    const __m512 nothing = _mm512_set1_ps(-INFINITY);
    for (int64_t r = 0; r < ROW_BLOCK; r++)
        if (r < count) {
            const __m512 approx = _mm512_add_ps(even[r], odd[r]);
            const __m512 margin = _mm512_fmadd_ps(error, _mm512_set1_ps(scales[r].by_error),
                                                  _mm512_fmadd_ps(largest, _mm512_set1_ps(scales[r].by_largest),
                                                                  _mm512_set1_ps(1e-6f)));
            lowest[r] = _mm512_mask_max_ps(lowest[r], real, lowest[r], _mm512_sub_ps(approx, margin));
            _mm512_storeu_ps(upper + r * head->padded_vocab + token,
                             _mm512_mask_blend_ps(real, nothing, _mm512_add_ps(approx, margin)));
        }
}

/* tile_bounds with its row count a constant, so that its loops over rows unroll without a branch. */
__attribute__((target("avx512f"))) static void tile_bounds_of(const Head *head, int64_t t, const float *hidden,
                                                             const Scale *scales, int64_t count, float *upper,
                                                             __m512 *lowest) {
    switch (count) {
#define ROWS(n) \
    case n: tile_bounds(head, t, hidden, scales, n, upper, lowest); break;
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8) ROWS(9) ROWS(10) ROWS(11) ROWS(12)
#undef ROWS
    }
}

/* One row's answer: the float32 logits of the tokens whose upper end reaches the largest lower end
 * `floor`, the first largest. */
__attribute__((target("avx512f"))) static int64_t screened_argmax(const Head *head, const float *hidden,
                                                                 const float *upper, float floor) {
    int64_t best = -1;
    float top = -INFINITY;
    for (int64_t v = 0; v < head->padded_vocab; v += TILE) {
        __mmask16 maybe = _mm512_cmp_ps_mask(_mm512_loadu_ps(upper + v), _mm512_set1_ps(floor), _CMP_GE_OQ);
        for (; maybe; maybe &= maybe - 1) {
            const int64_t token = v + __builtin_ctz(maybe);
            const float logit = exact_logit(head->weight + token * head->dim, hidden, head->dim);
            if (best < 0 || logit > top) top = logit, best = token;
        }
    }
    return best;
}

/* A row's bound's scale; 0 for a row taken in float32 instead (not finite, or so large that the sums
 * could overflow: |logit| <= 1e6 x 1e28 stays far below float's limit). */
static int prepared_row(const float *row, int64_t dim, Scale *scale) {
    double total = 0.0;
    for (int64_t d = 0; d < dim; d++) total += fabs((double)row[d]);
    scale->by_error = (float)total * 1.001f;
    scale->by_largest = (float)(total / 1024.0) * 1.001f;
    return total < LARGEST_ROW;
}

/* Each row's greedy token into chosen[rows]; `upper` is scratch of rows x padded_vocab floats,
 * `lowest` of threads x rows vectors, `scales` and `screened` of rows. */
__attribute__((target("avx512f"))) static void screened_tokens(const Head *head, const float *hidden, int64_t rows,
                                                              float *upper, __m512 *lowest, int64_t threads,
                                                              Scale *scales, int *screened, int64_t *chosen) {
    const int64_t dim = head->dim, tiles = head->padded_vocab / TILE;
    for (int64_t r = 0; r < rows; r++) screened[r] = prepared_row(hidden + r * dim, dim, scales + r);
    for (int64_t i = 0; i < threads * rows; i++) lowest[i] = _mm512_set1_ps(-INFINITY);
    /* Rows in blocks of equal size (13 rows as 7 + 6, not 12 + 1: a block's sums are its parallel chains). */
    const int64_t blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK, block = (rows + blocks - 1) / blocks;
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        __m512 *own = lowest + omp_get_thread_num() * rows;
#else
        __m512 *own = lowest;
#endif
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++)
            for (int64_t first = 0; first < rows; first += block)
                tile_bounds_of(head, t, hidden + first * dim, scales + first, rows - first < block ? rows - first : block,
                            upper + first * head->padded_vocab, own + first);
    }
#pragma omp parallel for schedule(static) if (rows >= 4)
    for (int64_t r = 0; r < rows; r++) {
        __m512 most = lowest[r];
        for (int64_t thread = 1; thread < threads; thread++) most = _mm512_max_ps(most, lowest[thread * rows + r]);
        const float floor = _mm512_reduce_max_ps(most);
        chosen[r] = screened[r] && isfinite(floor)
                        ? screened_argmax(head, hidden + r * dim, upper + r * head->padded_vocab, floor)
                        : exact_argmax(head->weight, hidden + r * dim, head->vocab, dim);
    }
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

/* tokens(hidden, rows, tiles, error, largest, weight, vocab, padded_vocab, dim, upper):
 * hidden and weight are integer addresses of float32 [rows, dim] and [vocab, dim]; tiles (uint32),
 * error and largest (float32) and the scratch upper (float32) are buffers.
 * screened_head.py checks the tensors. A list of each row's token. */
static PyObject *tokens(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "tokens takes 10 arguments");
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
    Py_buffer tiles = {0}, error = {0}, largest = {0}, upper = {0};
    PyObject *result = NULL;
#ifdef _OPENMP
    const int64_t threads = omp_get_max_threads();
#else
    const int64_t threads = 1;
#endif
    int64_t *chosen = PyMem_Malloc(rows * sizeof(int64_t));
    Scale *scales = PyMem_Malloc(rows * sizeof(Scale));
    int *screened = PyMem_Malloc(rows * sizeof(int));
    __m512 *lowest = aligned_alloc(64, threads * rows * sizeof(__m512));
    if (chosen == NULL || scales == NULL || screened == NULL || lowest == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (get_buffer(args[2], &tiles, 4, head.padded_vocab * head.dim / 2, "tiles") != 0 ||
        get_buffer(args[3], &error, 4, head.padded_vocab, "error") != 0 ||
        get_buffer(args[4], &largest, 4, head.padded_vocab, "largest") != 0 ||
        get_buffer(args[9], &upper, 4, rows * head.padded_vocab, "upper") != 0)
        goto done;
    head.tiles = tiles.buf;
    head.error = error.buf;
    head.largest = largest.buf;
    Py_BEGIN_ALLOW_THREADS
    screened_tokens(&head, hidden, rows, upper.buf, lowest, threads, scales, screened, chosen);
    Py_END_ALLOW_THREADS
    result = PyList_New(rows);
    for (int64_t r = 0; result != NULL && r < rows; r++) {
        PyObject *item = PyLong_FromLongLong(chosen[r]);
        if (item == NULL) Py_CLEAR(result);
        else PyList_SET_ITEM(result, r, item);
    }
done:
    PyMem_Free(chosen);
    PyMem_Free(scales);
    PyMem_Free(screened);
    free(lowest);
    PyBuffer_Release(&tiles);
    PyBuffer_Release(&error);
    PyBuffer_Release(&largest);
    PyBuffer_Release(&upper);
    return result;
}

/* Whether this CPU runs the kernel's vector code (AVX-512 F); the module is useless elsewhere. */
static PyObject *available(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    __builtin_cpu_init();
    return PyBool_FromLong(__builtin_cpu_supports("avx512f"));
}

static PyMethodDef methods[] = {
    {"tokens", (PyCFunction)(void (*)(void))tokens, METH_FASTCALL,
     "Each hidden row's greedy token, screened through the bfloat16 head."},
    {"available", available, METH_NOARGS, "Whether this CPU runs the kernel (AVX-512 F)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_screened_head", NULL, -1, methods};

PyMODINIT_FUNC PyInit__screened_head(void) { return PyModule_Create(&definition); }
