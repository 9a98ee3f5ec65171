/* What panel_linear_kernel.c offers other extensions (layer_kernel.c): y = x W^T with W packed in
 * panels (panel_linear.py's layout), as a C function behind the capsule
 * `decoder._panel_linear.multiply_all` (None where this CPU runs neither AVX-512 nor AVX2 with FMA).
 * x [m, k], y [m, n], float32; it runs on torch's OpenMP threads and needs no Python state. */
#ifndef CREST_PANEL_LINEAR_API_H
#define CREST_PANEL_LINEAR_API_H

#include <stdint.h>

#define MULTIPLY_ALL_CAPSULE "decoder._panel_linear.multiply_all"
typedef void (*MultiplyAll)(const float *x, int64_t m, int64_t k, const float *packed, float *y, int64_t n);

#endif
