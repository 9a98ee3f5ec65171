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
 * to bfloat16, m_v: its largest |w| or |w'|): approx_v sums the products w' x h in float32,
 *   |approx_v - exact_v| <= e_v A + (the two float32 sums' rounding, products included, each under
 *   577 x 2^-24 x m_v x A for SmolLM2, under 2^-14 m_v A) <= M_v = e_v A + 2^-10 m_v A,
 * computed with 0.1% to spare, plus 1e-6 (for subnormal terms a flush-to-zero mode would drop).
 * Where the CPU multiplies bfloat16 pairs (AVX512-BF16: twice the float32 multiply-adds per
 * instruction, which pays once a pass has several rows), the row is rounded to bfloat16 as well, h',
 * with subnormals to zero as the instruction reads them; with D = |h - h'|_1 the same argument gives
 *   |approx_v - exact_v| <= e_v A + m_v D + 2^-14 m_v (A + D) <= e_v A + m_v (D + 2^-10 (A + D))
 * (the products of two bfloat16 values are exact in float32; the sums round as above). With
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

#define TILE 16 /* tokens per tile of the bfloat16 copy: one AVX-512 vector of float32 sums, two AVX2 ones */
#define MAX_DIM 4096
#define LARGEST_ROW 1e28 /* |h|_1 beyond: every token in float32 (with weights under 1e6, no sum overflows) */

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

/* A row's bound's scale; 0 for a row taken in float32 instead (not finite, or so large that the sums
 * could overflow: |logit| <= 1e6 x 1e28 stays far below float's limit). */
static int prepared_row(const float *row, int64_t dim, Scale *scale) {
    double total = 0.0;
    for (int64_t d = 0; d < dim; d++) total += fabs((double)row[d]);
    scale->by_error = (float)total * 1.001f;
    scale->by_largest = (float)(total / 1024.0) * 1.001f;
    return total < LARGEST_ROW;
}

/* AVX512-BF16 code where the compiler has its instructions and their CPU test (GCC 11, clang 12 on). */
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define PAIRS_BUILT 1
#else
#define PAIRS_BUILT 0
#endif

#if PAIRS_BUILT
/* A row rounded to bfloat16 for the pair products (subnormals to zero, as the instruction reads them),
 * a pair of values per uint32, the first in the low bits; and its bound's scale. */
static int prepared_pairs(const float *row, int64_t dim, Scale *scale, uint32_t *pairs) {
    double total = 0.0, moved = 0.0; /* A and D */
    for (int64_t d = 0; d < dim; d += 2) {
        uint32_t halves[2];
        for (int i = 0; i < 2; i++) {
            const float value = row[d + i];
            uint32_t bits, rounded;
            memcpy(&bits, &value, sizeof bits);
            rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u; /* to nearest, ties to even */
            if ((rounded & 0x7f800000u) == 0) rounded &= 0x80000000u;
            float back;
            memcpy(&back, &rounded, sizeof back);
            total += fabs((double)value);
            moved += fabs((double)value - (double)back);
            halves[i] = rounded >> 16;
        }
        pairs[d / 2] = halves[0] | halves[1] << 16;
    }
    scale->by_error = (float)total * 1.001f;
    scale->by_largest = (float)(moved + (total + moved) / 1024.0) * 1.001f;
    return total < LARGEST_ROW;
}
#endif

typedef void (*ScreenedTokens)(const Head *head, const float *hidden, int64_t rows, float *upper, void *lowest,
                               int64_t threads, uint32_t *pairs, Scale *scales, int *screened, int64_t *chosen);

/* The vector code, once per instruction set at its native width (screened_head_isa.h, which undefines
 * the parameters below after use); the module picks one when it loads. */
#if PAIRS_BUILT
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")
#define ISA avx512bf16
#define LANES 16
#define ROW_BLOCK 12
#define SUMS 2
#define PAIR_PRODUCTS 1
#include "screened_head_isa.h"
#pragma GCC pop_options
#endif

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#define ISA avx512
#define LANES 16
#define ROW_BLOCK 12
#define SUMS 2
#define PAIR_PRODUCTS 0
#include "screened_head_isa.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA avx2
#define LANES 8
#define ROW_BLOCK 5
#define SUMS 1
#define PAIR_PRODUCTS 0
#include "screened_head_isa.h"
#pragma GCC pop_options

static ScreenedTokens screened_tokens = NULL;
static const char *screen_isa = "none";

/* The widest set this CPU runs (AVX-512 with bfloat16 pair products, AVX-512, AVX2 with FMA), or the
 * one CREST_HEAD_ISA names (tests run each on one machine); none without AVX2 and FMA, or where the
 * named set does not run: then `available` says False and the float32 head answers. */
static int asked_for(const char *name) {
    const char *asked = getenv("CREST_HEAD_ISA");
    return asked == NULL || *asked == '\0' || strcmp(asked, name) == 0;
}

static void choose_screen(void) {
    __builtin_cpu_init();
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#if PAIRS_BUILT
    if (avx512 && __builtin_cpu_supports("avx512bf16") && asked_for("avx512bf16")) {
        screened_tokens = screened_tokens_avx512bf16;
        screen_isa = "avx512bf16";
        return;
    }
#endif
    if (avx512 && asked_for("avx512")) {
        screened_tokens = screened_tokens_avx512;
        screen_isa = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && asked_for("avx2")) {
        screened_tokens = screened_tokens_avx2;
        screen_isa = "avx2";
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
    if (screened_tokens == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "tokens: this CPU has neither AVX-512 nor AVX2 with FMA (see available())");
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
    uint32_t *pairs = PyMem_Malloc(rows * head.dim / 2 * sizeof(uint32_t));
    void *lowest = aligned_alloc(64, threads * rows * 64); /* a vector of up to 64 bytes per thread and row */
    if (chosen == NULL || scales == NULL || screened == NULL || pairs == NULL || lowest == NULL) {
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
    screened_tokens(&head, hidden, rows, upper.buf, lowest, threads, pairs, scales, screened, chosen);
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
    PyMem_Free(pairs);
    free(lowest);
    PyBuffer_Release(&tiles);
    PyBuffer_Release(&error);
    PyBuffer_Release(&largest);
    PyBuffer_Release(&upper);
    return result;
}

/* Whether this CPU runs the kernel's vector code (AVX-512 or AVX2 with FMA). */
static PyObject *available(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyBool_FromLong(screened_tokens != NULL);
}

static PyObject *instruction_set(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyUnicode_FromString(screen_isa);
}

static PyMethodDef methods[] = {
    {"tokens", (PyCFunction)(void (*)(void))tokens, METH_FASTCALL,
     "Each hidden row's greedy token, screened through the bfloat16 head."},
    {"available", available, METH_NOARGS, "Whether this CPU runs the kernel (AVX-512, or AVX2 with FMA)."},
    {"instruction_set", instruction_set, METH_NOARGS, "The instruction set whose code runs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_screened_head", NULL, -1, methods};

PyMODINIT_FUNC PyInit__screened_head(void) {
    choose_screen();
    return PyModule_Create(&definition);
}
