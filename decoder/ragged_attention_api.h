/* What ragged_attention_kernel.c offers other extensions (layer_kernel.c): one layer's attention of
 * a ragged plan, as a C function behind the capsule `decoder._ragged_attention.attend_plan`. */
#ifndef CREST_RAGGED_ATTENTION_API_H
#define CREST_RAGGED_ATTENTION_API_H

#include <stdint.h>

#define RAGGED_MAX_FED 64 /* fed offsets fit one uint64 of `sees` */
#define ATTEND_PLAN_CAPSULE "decoder._ragged_attention.attend_plan"

typedef struct {
    const float *query, *key, *value; /* [n, ., head_dim] with token strides below (elements) */
    int64_t query_stride, key_stride, value_stride;
    float *out;                        /* [n, heads * head_dim] */
    float *cache_keys, *cache_values;  /* the layer's [rows, kv_heads, slots, head_dim] */
    const int64_t *row_of, *offset_of, *starts; /* per token: row, fed offset; per row: cached length */
    const uint64_t *sees;
    int64_t tokens, rows, heads, kv_heads, head_dim, slots;
    float scale;
} Layer;

/* Write the fed keys and values into the cache and attend: 0, or ATTEND_BAD_PLAN (the plan is out of
 * the kernel's limits: nothing written) or ATTEND_NO_MEMORY. Needs no Python state (no GIL). */
enum { ATTEND_OK = 0, ATTEND_BAD_PLAN = -1, ATTEND_NO_MEMORY = -2 };
typedef int (*AttendPlan)(const Layer *layer);

#endif
