/* y = x W^T for the narrow inputs of decoding (1 to ~64 rows) in float32 on a CPU.
 *
 * A pass of a 135M-parameter model reads 540 MB of float32 weights; with 8 to 24 fed tokens that
 * read, not the arithmetic, sets the time, if the two overlap. oneDNN's kernel reads each block of
 * weights and then computes on it, so its passes of 24 tokens cost about the read plus the
 * arithmetic (benchmarks/product_costs.py times both).
 *
 * Here W is laid out in panels of PANEL output columns, each [k][PANEL] contiguous
 * (panel_linear.py packs it once). A thread takes a run of panels; for each, it multiplies blocks
 * of up to ROWS input rows with the panel held in registers as it goes (ROWS x 3 vector
 * accumulators), and while doing so prefetches its next panel into L2, spread evenly over the
 * blocks, so the memory traffic of the next panel runs during the arithmetic of this one.
 *
 * Every output is its own accumulator summed in k order, so a row's result does not depend on the
 * other rows of the call (tests/decoder/test_panel_linear.py holds it to that, bit for bit, and to
 * a float64 product). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16                         /* floats of one vector */
#define VECTORS 3                        /* vectors of a panel's row */
#define PANEL (VECTORS * LANES)          /* output columns of a panel */
#define ROWS 8                           /* input rows of a block: ROWS x VECTORS accumulators */
#define LINE 64                          /* bytes of a cache line */
#define LINES_PER_K (PANEL * 4 / LINE)   /* cache lines of one k of a panel */

typedef float vfloat __attribute__((vector_size(64)));
typedef float vfloat_unaligned __attribute__((vector_size(64), aligned(4), may_alias));

static inline __attribute__((always_inline)) vfloat load(const float *p) { return *(const vfloat_unaligned *)p; }
static inline __attribute__((always_inline)) void store(float *p, vfloat v) { *(vfloat_unaligned *)p = v; }

typedef struct {
    const char *next, *end; /* the part of the next panel not prefetched yet */
    int64_t lines;          /* lines to prefetch per k of a block */
} Prefetch;

/* Rows [0, rows) of x (row stride k) times one panel into y (row stride n), `columns` <= PANEL of
 * them real; `rows` a constant where inlined, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void multiply_block(const float *x, int64_t k, const float *panel,
                                                                 float *y, int64_t n, int64_t columns,
                                                                 const int rows, Prefetch *prefetch) {
    vfloat sums[ROWS][VECTORS];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < VECTORS; v++) sums[r][v] = (vfloat){0};
    const char *ahead = prefetch->next;
    for (int64_t i = 0; i < k; i++) {
        vfloat weights[VECTORS];
        for (int v = 0; v < VECTORS; v++) weights[v] = load(panel + i * PANEL + v * LANES);
        for (int64_t line = 0; line < prefetch->lines && ahead < prefetch->end; line++, ahead += LINE)
            __builtin_prefetch(ahead, 0, 3);
        for (int r = 0; r < rows; r++) {
            const vfloat input = (vfloat){0} + x[r * k + i];
            for (int v = 0; v < VECTORS; v++) sums[r][v] += input * weights[v];
        }
    }
    prefetch->next = ahead;
    for (int r = 0; r < rows; r++) {
        if (columns == PANEL) {
            for (int v = 0; v < VECTORS; v++) store(y + r * n + v * LANES, sums[r][v]);
        } else {
            float row[PANEL];
            for (int v = 0; v < VECTORS; v++) store(row + v * LANES, sums[r][v]);
            memcpy(y + r * n, row, columns * sizeof(float));
        }
    }
}

/* Every block of rows times panel `p`, prefetching [next, next_end). Compiled for AVX-512, AVX2 and
 * the base instruction set; the loader picks one (panel_linear.py uses the kernel only where the
 * AVX-512 one runs: the others spill accumulators). */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static void multiply_panel(
    const float *x, int64_t m, int64_t k, const float *panel, float *y, int64_t n, int64_t p, const float *next,
    const float *next_end) {
    const int64_t first_column = p * PANEL, columns = n - first_column < PANEL ? n - first_column : PANEL;
    const int64_t blocks = (m + ROWS - 1) / ROWS;
    Prefetch prefetch = {(const char *)next, (const char *)next_end, (LINES_PER_K + blocks - 1) / blocks};
    for (int64_t first_row = 0; first_row < m; first_row += ROWS) {
        const int64_t rows = m - first_row < ROWS ? m - first_row : ROWS;
        const float *xs = x + first_row * k;
        float *ys = y + first_row * n + first_column;
        switch (rows) { /* one specialised copy per block height */
        case 8: multiply_block(xs, k, panel, ys, n, columns, 8, &prefetch); break;
        case 7: multiply_block(xs, k, panel, ys, n, columns, 7, &prefetch); break;
        case 6: multiply_block(xs, k, panel, ys, n, columns, 6, &prefetch); break;
        case 5: multiply_block(xs, k, panel, ys, n, columns, 5, &prefetch); break;
        case 4: multiply_block(xs, k, panel, ys, n, columns, 4, &prefetch); break;
        case 3: multiply_block(xs, k, panel, ys, n, columns, 3, &prefetch); break;
        case 2: multiply_block(xs, k, panel, ys, n, columns, 2, &prefetch); break;
        default: multiply_block(xs, k, panel, ys, n, columns, 1, &prefetch); break;
        }
    }
}

/* Each thread of torch's OpenMP runtime (the extension shares its libgomp, as the ragged kernel
 * does) takes a contiguous run of panels, so its prefetches run ahead in the order it reads. */
static void multiply_all(const float *x, int64_t m, int64_t k, const float *packed, float *y, int64_t n) {
    const int64_t panels = (n + PANEL - 1) / PANEL, panel_floats = k * PANEL;
#pragma omp parallel
    {
#ifdef _OPENMP
        const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
#else
        const int64_t threads = 1, thread = 0;
#endif
        const int64_t first = panels * thread / threads, last = panels * (thread + 1) / threads;
        for (int64_t p = first; p < last; p++) {
            const float *next = p + 1 < last ? packed + (p + 1) * panel_floats : NULL;
            multiply_panel(x, m, k, packed + p * panel_floats, y, n, p, next, next ? next + panel_floats : NULL);
        }
    }
}

/* multiply(x, rows, k, packed, y, n): integer addresses of float32 x [rows, k], the packed weight
 * [ceil(n / PANEL), k, PANEL] and y [rows, n]; panel_linear.py checks the tensors behind them. */
static PyObject *multiply(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "multiply takes 6 arguments");
        return NULL;
    }
    const float *x = PyLong_AsVoidPtr(args[0]);
    const int64_t m = PyLong_AsLongLong(args[1]), k = PyLong_AsLongLong(args[2]);
    const float *packed = PyLong_AsVoidPtr(args[3]);
    float *y = PyLong_AsVoidPtr(args[4]);
    const int64_t n = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (m < 0 || k <= 0 || n <= 0 || (m > 0 && (x == NULL || packed == NULL || y == NULL))) {
        PyErr_SetString(PyExc_ValueError, "multiply: rows >= 0, k > 0, n > 0 and non-null buffers");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    multiply_all(x, m, k, packed, y, n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Whether the AVX-512 clone is the one that runs here. */
static PyObject *vectorised(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    __builtin_cpu_init();
    return PyBool_FromLong(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"));
}

static PyMethodDef methods[] = {
    {"multiply", (PyCFunction)(void (*)(void))multiply, METH_FASTCALL,
     "y = x W^T of float32 x [rows, k] and W packed in panels, into y [rows, n]."},
    {"vectorised", vectorised, METH_NOARGS, "Whether the AVX-512 code runs on this CPU."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_panel_linear", NULL, -1, methods};

PyMODINIT_FUNC PyInit__panel_linear(void) { return PyModule_Create(&definition); }
