/* What q4_panel_kernel.c offers other extensions (layer_kernel.c): y = x W^T with W's GGUF Q4_1 codes
 * packed in panels (q4_panels.py's layout), as a C function behind the capsule
 * `decoder._q4_panel.multiply_all` (None where this CPU has no AVX-512). x [m, k], y [m, n], float32,
 * n and k multiples of 32; it runs on torch's OpenMP threads and needs no Python state. */
#ifndef CREST_Q4_PANEL_API_H
#define CREST_Q4_PANEL_API_H

#include <stdint.h>

#define MULTIPLY_Q4_CAPSULE "decoder._q4_panel.multiply_all"
typedef void (*MultiplyQ4)(const float *x, int64_t m, int64_t k, const uint8_t *packed, float *y, int64_t n);

#endif
