/* y = x W^T in float32 on a CPU, with W read from its GGUF Q4_1 encoding: 4-bit codes q and, per 32
 * weights of a row, a float16 scale d and offset m.
 *
 * A pass of one fed token reads every weight once; from float32 copies that is 424 MB for SmolLM2's
 * layers, from the codes 66 MB. The weights the model computes with are what GGUF's own dequantization
 * gave: (float)d * q + (float)m in float32, the product exact (11 x 4 bits), so one rounding, the
 * rounding of a fused multiply-add. Here each weight is rebuilt in registers by that fused multiply-add,
 * so it is the very float32 weight of the model, and each output is one accumulator summed in k order
 * with fused multiply-adds, as panel_linear_kernel.c sums it: the two kernels give the same bits
 * (tests/decoder/test_q4_panels.py holds them to it).
 *
 * Layout (q4_panels.py packs it): panels of PANEL output columns; a panel is k / BLOCK blocks, each
 * BLOCK_BYTES: the PANEL columns' d (float16), their m (float16), then for each of the BLOCK k the
 * PANEL codes, column j in the low nibble of byte j and column j + 16 in its high nibble. A thread
 * takes a run of panels; for each, blocks of up to ROWS input rows keep 2 x ROWS accumulators in
 * registers (with the 2 weight vectors and their d and m: 30 of AVX-512's 32), and the next panel is
 * prefetched a little per block of k, spread over the panel's work (as panel_linear_kernel.c does). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "q4_panel_api.h"

#define PANEL 32
#define BLOCK 32
#define BLOCK_BYTES (2 * PANEL * 2 + BLOCK * PANEL / 2)
#define ROWS 12
#define LINE 64

typedef struct {
    const char *next, *end; /* the part of the next panel not prefetched yet */
    int64_t lines;          /* lines to prefetch per block of k */
} Prefetch;

/* Rows [0, rows) of x (row stride k) times one panel into y (row stride n); `rows` a constant where
 * inlined, so the accumulators stay in registers. */
static inline __attribute__((always_inline, target("avx512f"))) void multiply_rows(const float *x, int64_t k,
                                                                                   const uint8_t *panel, float *y,
                                                                                   int64_t n, const int rows,
                                                                                   Prefetch *prefetch) {
    __m512 sums[ROWS][2];
    for (int r = 0; r < rows; r++) sums[r][0] = sums[r][1] = _mm512_setzero_ps();
    const __m512i nibble = _mm512_set1_epi32(0xF);
    for (int64_t b = 0; b < k / BLOCK; b++) {
        const uint8_t *block = panel + b * BLOCK_BYTES;
        const __m512 d_low = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));
        const __m512 d_high = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32)));
        const __m512 m_low = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 64)));
        const __m512 m_high = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 96)));
        const uint8_t *codes = block + 4 * PANEL;
        for (int64_t line = 0; line < prefetch->lines && prefetch->next < prefetch->end; line++, prefetch->next += LINE)
            _mm_prefetch(prefetch->next, _MM_HINT_T0);
        for (int i = 0; i < BLOCK; i++) {
            const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i * PANEL / 2)));
            const __m512 low = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, nibble));
            const __m512 high = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
            const __m512 weights_low = _mm512_fmadd_ps(low, d_low, m_low); /* GGUF's weight, to the bit */
            const __m512 weights_high = _mm512_fmadd_ps(high, d_high, m_high);
            const float *column = x + b * BLOCK + i;
            for (int r = 0; r < rows; r++) {
                const __m512 input = _mm512_set1_ps(column[r * k]);
                sums[r][0] = _mm512_fmadd_ps(input, weights_low, sums[r][0]);
                sums[r][1] = _mm512_fmadd_ps(input, weights_high, sums[r][1]);
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm512_storeu_ps(y + r * n, sums[r][0]);
        _mm512_storeu_ps(y + r * n + 16, sums[r][1]);
    }
}

/* Every block of rows times panel `p`, prefetching the next panel [next, end) over them. */
static __attribute__((target("avx512f"))) void multiply_panel(const float *x, int64_t m, int64_t k,
                                                              const uint8_t *panel, float *y, int64_t n,
                                                              const uint8_t *next, const uint8_t *end) {
    const int64_t blocks = (m + ROWS - 1) / ROWS, steps = blocks * (k / BLOCK);
    const int64_t lines = (end - next) / LINE;
    Prefetch prefetch = {(const char *)next, (const char *)end, (lines + steps - 1) / steps};
    /* rows shared evenly among the blocks, as panel_linear_kernel.c does */
    for (int64_t block = 0, rows = 0, first = 0; block < blocks; block++, first += rows) {
        rows = m / blocks + (block < m % blocks);
        const float *xs = x + first * k;
        float *ys = y + first * n;
        switch (rows) {
#define ROWS_CASE(R) \
    case R: multiply_rows(xs, k, panel, ys, n, R, &prefetch); break;
            ROWS_CASE(12) ROWS_CASE(11) ROWS_CASE(10) ROWS_CASE(9) ROWS_CASE(8) ROWS_CASE(7)
            ROWS_CASE(6) ROWS_CASE(5) ROWS_CASE(4) ROWS_CASE(3) ROWS_CASE(2)
#undef ROWS_CASE
        default: multiply_rows(xs, k, panel, ys, n, 1, &prefetch); break;
        }
    }
}

static int runs_here = 0;

/* Each thread of torch's OpenMP runtime takes a contiguous run of panels (see panel_linear_kernel.c). */
static void multiply_q4_all(const float *x, int64_t m, int64_t k, const uint8_t *packed, float *y, int64_t n) {
    if (m == 0) return;
    const int64_t panels = n / PANEL, panel_bytes = (k / BLOCK) * BLOCK_BYTES;
#pragma omp parallel
    {
#ifdef _OPENMP
        const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
#else
        const int64_t threads = 1, thread = 0;
#endif
        const int64_t first = panels * thread / threads, last = panels * (thread + 1) / threads;
        for (int64_t p = first; p < last; p++) {
            const uint8_t *next = p + 1 < last ? packed + (p + 1) * panel_bytes : NULL;
            multiply_panel(x, m, k, packed + p * panel_bytes, y + p * PANEL, n, next, next ? next + panel_bytes : NULL);
        }
    }
}

/* multiply(x, rows, k, packed, y, n): integer addresses of float32 x [rows, k], the packed codes and
 * y [rows, n]; n and k multiples of 32; q4_panels.py checks the tensors behind them. */
static PyObject *multiply(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "multiply takes 6 arguments");
        return NULL;
    }
    const float *x = PyLong_AsVoidPtr(args[0]);
    const int64_t m = PyLong_AsLongLong(args[1]), k = PyLong_AsLongLong(args[2]);
    const uint8_t *packed = PyLong_AsVoidPtr(args[3]);
    float *y = PyLong_AsVoidPtr(args[4]);
    const int64_t n = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (!runs_here) {
        PyErr_SetString(PyExc_RuntimeError, "multiply: this CPU has no AVX-512");
        return NULL;
    }
    if (m < 0 || k <= 0 || n <= 0 || k % BLOCK || n % PANEL || (m > 0 && (x == NULL || packed == NULL || y == NULL))) {
        PyErr_SetString(PyExc_ValueError, "multiply: rows >= 0, k and n positive multiples of 32, non-null buffers");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    multiply_q4_all(x, m, k, packed, y, n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *available(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyBool_FromLong(runs_here);
}

static PyMethodDef methods[] = {
    {"multiply", (PyCFunction)(void (*)(void))multiply, METH_FASTCALL,
     "y = x W^T of float32 x [rows, k] and W's Q4_1 codes packed in panels, into y [rows, n]."},
    {"available", available, METH_NOARGS, "Whether the kernel runs on this CPU (AVX-512)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_q4_panel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__q4_panel(void) {
    __builtin_cpu_init();
    runs_here = __builtin_cpu_supports("avx512f");
    PyObject *module = PyModule_Create(&definition);
    if (module == NULL) return NULL;
    /* For layer_kernel.c: the product as a C function, where this CPU runs it. */
    PyObject *capsule = runs_here ? PyCapsule_New((void *)multiply_q4_all, MULTIPLY_Q4_CAPSULE, NULL) : Py_NewRef(Py_None);
    if (capsule == NULL || PyModule_AddObject(module, "multiply_all", capsule) != 0) {
        Py_XDECREF(capsule);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
