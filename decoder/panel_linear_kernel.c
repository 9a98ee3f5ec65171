/* y = x W^T for the narrow inputs of decoding (1 to ~64 rows) in float32 on a CPU.
 *
 * A pass of a 135M-parameter model reads 540 MB of float32 weights; with 8 to 24 fed tokens that
 * read, not the arithmetic, sets the time, if the two overlap. oneDNN's kernel reads each block of
 * weights and then computes on it, so its passes of 24 tokens cost about the read plus the
 * arithmetic (benchmarks/product_costs.py times both).
 *
 * Here W is laid out in panels of PANEL output columns, each [k][PANEL] contiguous
 * (panel_linear.py packs it once). A thread takes a run of panels; for each, it multiplies blocks
 * of up to ROWS input rows by the panel's tiles, the accumulators in registers (below), and while
 * doing so prefetches its next panel, a fraction of a cache line per k step, spread evenly over
 * all of this panel's blocks and tiles, so the memory traffic of the next panel runs during the
 * arithmetic of this one. (Rounding the rate up to whole lines per step bunched the prefetches into
 * the first blocks where a panel has many, and the read and the arithmetic ran one after the other
 * again: SmolLM2's products on 2 AVX2 cores, the two schedules alternating, 24 tokens 64 -> 49 ms,
 * 32 tokens 75 -> 54 ms.)
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

#include "panel_linear_api.h"

#define PANEL 48                         /* output columns of a panel (panel_linear.py's PANEL) */
#define LINE 64                          /* bytes of a cache line */
#define LINES_PER_K (PANEL * 4 / LINE)   /* cache lines of one k of a panel */

typedef struct {
    const char *next, *end; /* the part of the next panel not prefetched yet */
    int64_t rate, credit;   /* lines to prefetch per k step, and those owed, both in 1/256 lines */
} Prefetch;

/* One instruction set's code: a panel is cut into tiles of VECTORS vectors of LANES floats, and a
 * block of up to ROWS input rows times one tile keeps ROWS x VECTORS accumulators in registers.
 * AVX-512 (32 registers): one tile of 3 x 16 floats, 8 rows. AVX2 (16 registers): three tiles of
 * 2 x 8 floats, 6 rows, so the 12 accumulators, 2 weight vectors and the broadcast input fit.
 * Each output is still one accumulator summed in k order with fused multiply-adds, so both give
 * the same bits. */
#define AT_MOST(height, rows) ((height) <= (rows) ? (height) : (rows))
#define PANEL_KERNEL(ISA, TARGET, LANES, VECTORS, ROWS)                                                                \
    typedef float vfloat_##ISA __attribute__((vector_size(LANES * 4)));                                                \
    typedef float vfloat_unaligned_##ISA __attribute__((vector_size(LANES * 4), aligned(4), may_alias));               \
                                                                                                                       \
    /* Rows [0, rows) of x (row stride k) times one tile into y (row stride n), `columns` <= the tile's of them real;  \
     * `rows` a constant where inlined, so the accumulators stay in registers. */                                      \
    static inline __attribute__((always_inline, target(TARGET))) void multiply_block_##ISA(                            \
        const float *x, int64_t k, const float *tile, float *y, int64_t n, int64_t columns, const int rows,            \
        Prefetch *prefetch) {                                                                                          \
        vfloat_##ISA sums[ROWS][VECTORS];                                                                              \
        for (int r = 0; r < rows; r++)                                                                                 \
            for (int v = 0; v < VECTORS; v++) sums[r][v] = (vfloat_##ISA){0};                                          \
        const char *ahead = prefetch->next;                                                                            \
        int64_t credit = prefetch->credit;                                                                             \
        for (int64_t i = 0; i < k; i++) {                                                                              \
            vfloat_##ISA weights[VECTORS];                                                                             \
            for (int v = 0; v < VECTORS; v++)                                                                          \
                weights[v] = *(const vfloat_unaligned_##ISA *)(tile + i * PANEL + v * LANES);                          \
            for (credit += prefetch->rate; credit >= 256 && ahead < prefetch->end; credit -= 256, ahead += LINE)       \
                __builtin_prefetch(ahead, 0, 3);                                                                       \
            for (int r = 0; r < rows; r++) {                                                                           \
                const float input = x[r * k + i]; /* broadcast by the product: no zero vector held */                  \
                for (int v = 0; v < VECTORS; v++) sums[r][v] += input * weights[v];                                    \
            }                                                                                                          \
        }                                                                                                              \
        prefetch->next = ahead;                                                                                        \
        prefetch->credit = credit;                                                                                     \
        for (int r = 0; r < rows; r++) {                                                                               \
            if (columns == VECTORS * LANES) {                                                                          \
                for (int v = 0; v < VECTORS; v++) *(vfloat_unaligned_##ISA *)(y + r * n + v * LANES) = sums[r][v];     \
            } else {                                                                                                   \
                float row[VECTORS * LANES];                                                                            \
                for (int v = 0; v < VECTORS; v++) *(vfloat_unaligned_##ISA *)(row + v * LANES) = sums[r][v];           \
                memcpy(y + r * n, row, columns * sizeof(float));                                                       \
            }                                                                                                          \
        }                                                                                                              \
    }                                                                                                                  \
                                                                                                                       \
    /* Every block of rows times every tile of panel `p`, prefetching [next, next_end) spread over them. */            \
    static __attribute__((target(TARGET))) void multiply_panel_##ISA(const float *x, int64_t m, int64_t k,             \
                                                                     const float *panel, float *y, int64_t n,          \
                                                                     int64_t p, const float *next,                     \
                                                                     const float *next_end) {                          \
        enum { TILE = VECTORS * LANES, TILES = PANEL / TILE };                                                         \
        const int64_t blocks = (m + ROWS - 1) / ROWS, pieces = blocks * TILES;                                         \
        const int64_t rate = (LINES_PER_K * 256 + pieces - 1) / pieces;                                                \
        Prefetch prefetch = {(const char *)next, (const char *)next_end, rate, 0};                                     \
        for (int t = 0; t < TILES; t++) {                                                                              \
            const int64_t first_column = p * PANEL + t * TILE;                                                         \
            if (first_column >= n) break;                                                                              \
            const int64_t columns = n - first_column < TILE ? n - first_column : TILE;                                 \
            /* rows shared evenly among the blocks: 8 as 4 + 4 rather than 6 + 2, whose short block holds too      \
             * few accumulators to keep the multiply-add units busy */                                                 \
            for (int64_t block = 0, rows = 0, first_row = 0; block < blocks; block++, first_row += rows) {             \
                rows = m / blocks + (block < m % blocks);                                                              \
                const float *xs = x + first_row * k, *tile = panel + t * TILE;                                         \
                float *ys = y + first_row * n + first_column;                                                          \
                /* one specialised copy per block height; those above ROWS never occur, the clamp only keeps them in   \
                 * bounds */                                                                                           \
                switch (rows) {                                                                                        \
                case 8: multiply_block_##ISA(xs, k, tile, ys, n, columns, AT_MOST(8, ROWS), &prefetch); break;         \
                case 7: multiply_block_##ISA(xs, k, tile, ys, n, columns, AT_MOST(7, ROWS), &prefetch); break;         \
                case 6: multiply_block_##ISA(xs, k, tile, ys, n, columns, AT_MOST(6, ROWS), &prefetch); break;         \
                case 5: multiply_block_##ISA(xs, k, tile, ys, n, columns, 5, &prefetch); break;                        \
                case 4: multiply_block_##ISA(xs, k, tile, ys, n, columns, 4, &prefetch); break;                        \
                case 3: multiply_block_##ISA(xs, k, tile, ys, n, columns, 3, &prefetch); break;                        \
                case 2: multiply_block_##ISA(xs, k, tile, ys, n, columns, 2, &prefetch); break;                        \
                default: multiply_block_##ISA(xs, k, tile, ys, n, columns, 1, &prefetch); break;                       \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
    }

PANEL_KERNEL(avx512, "avx512f,avx512bw,avx512dq,avx512vl,fma", 16, 3, 8)
PANEL_KERNEL(avx2, "avx2,fma", 8, 2, 6)

typedef void (*PanelProduct)(const float *, int64_t, int64_t, const float *, float *, int64_t, int64_t, const float *,
                             const float *);

/* The code this CPU runs (set when the module loads): AVX-512 where it can, else AVX2 with FMA, else
 * none (oneDNN answers: the base instruction set would spill the accumulators). */
static PanelProduct panel_product = NULL;
static const char *instruction_set_name = NULL;

static void choose_panel_product(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        panel_product = multiply_panel_avx512;
        instruction_set_name = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        panel_product = multiply_panel_avx2;
        instruction_set_name = "avx2";
    }
}

/* Each thread of torch's OpenMP runtime (the extension shares its libgomp, as the ragged kernel
 * does) takes a contiguous run of panels, so its prefetches run ahead in the order it reads. */
static void multiply_all(const float *x, int64_t m, int64_t k, const float *packed, float *y, int64_t n) {
    if (m == 0) return;
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
            panel_product(x, m, k, packed + p * panel_floats, y, n, p, next, next ? next + panel_floats : NULL);
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
    if (panel_product == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "multiply: this CPU has neither AVX-512 nor AVX2 with FMA");
        return NULL;
    }
    if (m < 0 || k <= 0 || n <= 0 || (m > 0 && (x == NULL || packed == NULL || y == NULL))) {
        PyErr_SetString(PyExc_ValueError, "multiply: rows >= 0, k > 0, n > 0 and non-null buffers");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    multiply_all(x, m, k, packed, y, n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The instruction set the products run in here: "avx512", "avx2", or None where neither runs. */
static PyObject *instruction_set(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    if (instruction_set_name == NULL) Py_RETURN_NONE;
    return PyUnicode_FromString(instruction_set_name);
}

static PyMethodDef methods[] = {
    {"multiply", (PyCFunction)(void (*)(void))multiply, METH_FASTCALL,
     "y = x W^T of float32 x [rows, k] and W packed in panels, into y [rows, n]."},
    {"instruction_set", instruction_set, METH_NOARGS, "The instruction set the products run in here, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_panel_linear", NULL, -1, methods};

PyMODINIT_FUNC PyInit__panel_linear(void) {
    choose_panel_product();
    PyObject *module = PyModule_Create(&definition);
    if (module == NULL) return NULL;
    /* For other extensions (layer_kernel.c): the product as a C function, where this CPU runs one. */
    PyObject *capsule = panel_product == NULL ? Py_NewRef(Py_None)
                                              : PyCapsule_New((void *)multiply_all, MULTIPLY_ALL_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(module, "multiply_all", capsule) != 0) {
        Py_XDECREF(capsule);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
