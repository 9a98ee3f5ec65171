/* The vector code of ragged_attention_kernel.c for one instruction set. That file includes it once
 * per set, each time with the set's `#pragma GCC target` in force and with ISA (a suffix for the
 * names below), LANES (floats of one native vector) and SUM_VECTORS (vectors of value sums a block
 * of queries keeps in registers) defined. Native widths matter: GCC lowers a 16-float vector on
 * AVX2 through the stack (a broadcast became 16 scalar stores), which made the AVX2 attention ~2x
 * slower than it had to be. */
#define JOIN_(name, isa) name##_##isa
#define JOIN(name, isa) JOIN_(name, isa)
#define vfloat JOIN(vfloat, ISA)
#define vint JOIN(vint, ISA)
#define vfloat_unaligned JOIN(vfloat_unaligned, ISA)
#define load JOIN(load, ISA)
#define store JOIN(store, ISA)
#define lane_sum JOIN(lane_sum, ISA)
#define exp_nonpositive JOIN(exp_nonpositive, ISA)
#define halving_masks JOIN(halving_masks, ISA)
#define key_dot JOIN(key_dot, ISA)
#define joined JOIN(joined, ISA)
#define block_scores JOIN(block_scores, ISA)
#define attend_row_head JOIN(attend_row_head, ISA)

typedef float vfloat __attribute__((vector_size(LANES * 4)));
typedef int32_t vint __attribute__((vector_size(LANES * 4)));
typedef float vfloat_unaligned __attribute__((vector_size(LANES * 4), aligned(4), may_alias));

static inline __attribute__((always_inline)) vfloat load(const float *p) { return *(const vfloat_unaligned *)p; }
static inline __attribute__((always_inline)) void store(float *p, vfloat v) { *(vfloat_unaligned *)p = v; }

static inline __attribute__((always_inline)) float lane_sum(vfloat v) {
    float sum = 0.0f;
    for (int i = 0; i < LANES; i++) sum += v[i];
    return sum;
}

/* What `block_scores` shuffles by: for each level (halving the lanes a key holds, from LANES to 1),
 * the lanes of two vectors that go into one, first halves in masks[2 * level], second halves in
 * masks[2 * level + 1] (indices past LANES - 1 take the second vector's lanes). */
static inline __attribute__((always_inline)) void halving_masks(vint *masks) {
    int level = 0;
    for (int half = LANES / 2; half >= 1; half /= 2, level++) {
        const int held = 2 * half, keys = LANES / held; /* lanes a key holds, keys a vector holds */
        for (int lane = 0; lane < LANES; lane++) {
            const int slot = lane / half, source = slot < keys ? 0 : LANES, key = slot % keys;
            masks[2 * level][lane] = source + key * held + lane % half;
            masks[2 * level + 1][lane] = source + key * held + half + lane % half;
        }
    }
}

/* e^x for x <= 0, and 0 below -87 (-inf included): Cody-Waite reduction and Cephes' polynomial,
 * within 2 ulp of expf, in vector operations (expf is a library call per element). */
static inline __attribute__((always_inline)) vfloat exp_nonpositive(vfloat x) {
    const vint vanishing = x < -87.0f;
    x = (vfloat)(((vint)x & ~vanishing) | ((vint)((vfloat){0} - 87.0f) & vanishing));
    const vint whole = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, vint); /* nearest, x <= 0 */
    const vfloat n = __builtin_convertvector(whole, vfloat);
    vfloat r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    vfloat p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vfloat power = (vfloat)((whole + 127) << 23);
    return (vfloat)((vint)(p * power) & ~vanishing);
}

/* One key's dot product with the query, lane by lane (the lanes are summed by `joined`). */
static inline __attribute__((always_inline)) vfloat key_dot(const vfloat *query, const float *key, const int64_t V) {
    vfloat dot = query[0] * load(key);
    for (int64_t v = 1; v < V; v++) dot += query[v] * load(key + v * LANES);
    return dot;
}

/* Two vectors into one at `level` of the halving tree: each key's lanes halved by adding the two
 * halves, so LANES keys' lane sums cost LANES - 1 shuffle pairs and adds, not a reduction each. */
static inline __attribute__((always_inline)) vfloat joined(vfloat a, vfloat b, const vint *masks, int level) {
    return __builtin_shuffle(a, b, masks[2 * level]) + __builtin_shuffle(a, b, masks[2 * level + 1]);
}

/* The dot products of a query with LANES keys (rows of D floats from `block`) as one vector. The
 * tree is written out so that each pair is joined as soon as both halves exist: a query's partial
 * sums stay in registers (an array of LANES parts summed at the end spilled to the stack). */
static inline __attribute__((always_inline)) vfloat block_scores(const float *query_row, const float *block,
                                                                 const vint *masks, const int64_t D) {
    vfloat query[MAX_HEAD_DIM / LANES];
    const int64_t V = D / LANES;
    for (int64_t v = 0; v < V; v++) query[v] = load(query_row + v * LANES);
#define KEY(j) key_dot(query, block + (j) * D, V)
#define PAIR(j) joined(KEY(j), KEY((j) + 1), masks, 0)
#define QUAD(j) joined(PAIR(j), PAIR((j) + 2), masks, 1)
#define OCTET(j) joined(QUAD(j), QUAD((j) + 4), masks, 2)
#if LANES == 16
    return joined(OCTET(0), OCTET(8), masks, 3);
#elif LANES == 8
    return OCTET(0);
#elif LANES == 4
    return QUAD(0);
#else
#error "LANES must be 4, 8 or 16"
#endif
#undef KEY
#undef PAIR
#undef QUAD
#undef OCTET
}

/* One row and one key head, head dimension D (whole vectors): write the row's fed keys and values,
 * then attend for its `count` tokens from `first` on. `scores` holds (count x groups) rows of the
 * span rounded up to whole vectors, `outputs` (count x groups) x D floats. */
static inline __attribute__((always_inline)) void attend_row_head(const Layer *layer, int64_t first, int64_t count,
                                                                  int64_t kv_head, float *scores, float *outputs,
                                                                  const int64_t D) {
    const int64_t groups = layer->heads / layer->kv_heads, V = D / LANES;
    const int64_t row = layer->row_of[first], start = layer->starts[row];
    float *keys = layer->cache_keys + ((row * layer->kv_heads + kv_head) * layer->slots) * D;
    float *values = layer->cache_values + ((row * layer->kv_heads + kv_head) * layer->slots) * D;
    int64_t widest = 0;
    for (int64_t t = first; t < first + count; t++) {
        const int64_t offset = layer->offset_of[t];
        memcpy(keys + (start + offset) * D, layer->key + t * layer->key_stride + kv_head * D, D * sizeof(float));
        memcpy(values + (start + offset) * D, layer->value + t * layer->value_stride + kv_head * D, D * sizeof(float));
        if (offset + 1 > widest) widest = offset + 1;
    }
    const int64_t span = start + widest, stride = (span + LANES - 1) / LANES * LANES, queries = count * groups;
    /* Scores: each key is read once for every query. */
    for (int64_t q = 0; q < queries; q++) {
        const int64_t t = first + q / groups, head = kv_head * groups + q % groups;
        memcpy(outputs + q * D, layer->query + t * layer->query_stride + head * D, D * sizeof(float));
    }
    /* A block of LANES keys at a time (read once from memory for all queries), its LANES dot products
     * summed into one vector by `block_scores`; keys past the span repeat the last one (a padded copy
     * of the last block), and their scores are masked below. */
    vint masks[2 * 5]; /* log2(LANES) <= 5 levels */
    halving_masks(masks);
    float padded[LANES * MAX_HEAD_DIM];
    for (int64_t k0 = 0; k0 < span; k0 += LANES) {
        const float *block = keys + k0 * D;
        /* The block four ahead, by cache line: the hardware's prefetcher alone left the kernel at 2/3
         * of the memory's speed. (Past the row's keys it reads other slots; a prefetch never faults.) */
        for (int64_t line = 0; line < LANES * D; line += 16) __builtin_prefetch(block + 4 * LANES * D + line, 0, 3);
        if (k0 + LANES > span) {
            for (int64_t j = 0; j < LANES; j++)
                memcpy(padded + j * D, keys + (k0 + j < span ? k0 + j : span - 1) * D, D * sizeof(float));
            block = padded;
        }
        for (int64_t q = 0; q < queries; q++)
            store(scores + q * stride + k0, block_scores(outputs + q * D, block, masks, D) * layer->scale);
    }
    /* Softmax per query over what it sees (the whole history, the tree offsets in `sees`): the rest
     * of its span is set to -inf, which the exponential turns into weight 0. */
    for (int64_t q = 0; q < queries; q++) {
        const uint64_t sees = layer->sees[first + q / groups];
        float *weights = scores + q * stride;
        for (int64_t j = 0; j < widest; j++)
            if (!((sees >> j) & 1)) weights[start + j] = -INFINITY;
        for (int64_t k = span; k < stride; k++) weights[k] = -INFINITY;
        vfloat highest = load(weights);
        for (int64_t k = LANES; k < stride; k += LANES) {
            const vfloat w = load(weights + k);
            highest = (vfloat)(((vint)w & (w > highest)) | ((vint)highest & ~(w > highest)));
        }
        float top = highest[0];
        for (int i = 1; i < LANES; i++) top = highest[i] > top ? highest[i] : top;
        vfloat total = {0};
        for (int64_t k = 0; k < stride; k += LANES) {
            const vfloat w = exp_nonpositive(load(weights + k) - top);
            store(weights + k, w);
            total += w;
        }
        const float inverse = 1.0f / lane_sum(total);
        for (int64_t k = 0; k < stride; k += LANES) store(weights + k, load(weights + k) * inverse);
    }
    /* Weighted values: each value read once for a block of queries whose sums stay in registers
     * (several independent sums, so the multiply-adds do not wait on each other; as many as the
     * instruction set's registers hold). */
    const int64_t block = SUM_VECTORS * LANES / D > 0 ? SUM_VECTORS * LANES / D : 1;
    for (int64_t q0 = 0; q0 < queries; q0 += block) {
        const int64_t in_block = queries - q0 < block ? queries - q0 : block;
        vfloat sum[MAX_HEAD_DIM / LANES] = {{0}};
        for (int64_t k = 0; k < span; k++) {
            const float *value = values + k * D;
            for (int64_t line = 0; line < D; line += 16) __builtin_prefetch(value + 16 * D + line, 0, 3); /* as keys */
            for (int64_t b = 0; b < block; b++) {
                const float weight = b < in_block ? scores[(q0 + b) * stride + k] : 0.0f;
                for (int64_t v = 0; v < V; v++) sum[b * V + v] += weight * load(value + v * LANES);
            }
        }
        for (int64_t b = 0; b < in_block; b++) {
            const int64_t t = first + (q0 + b) / groups, head = kv_head * groups + (q0 + b) % groups;
            for (int64_t v = 0; v < V; v++) store(layer->out + t * layer->heads * D + head * D + v * LANES, sum[b * V + v]);
        }
    }
}

/* One row and key head, the head dimension a constant where it can be (so that its loops unroll). */
static void JOIN(attend_task, ISA)(const Layer *layer, int64_t first, int64_t count, int64_t kv_head, float *scores,
                                   float *outputs) {
    if (layer->head_dim == 64)
        attend_row_head(layer, first, count, kv_head, scores, outputs, 64);
    else if (layer->head_dim == 128)
        attend_row_head(layer, first, count, kv_head, scores, outputs, 128);
    else /* any other whole number of vectors, up to MAX_HEAD_DIM */
        attend_row_head(layer, first, count, kv_head, scores, outputs, layer->head_dim);
}

#undef vfloat
#undef vint
#undef vfloat_unaligned
#undef load
#undef store
#undef lane_sum
#undef exp_nonpositive
#undef halving_masks
#undef key_dot
#undef joined
#undef block_scores
#undef attend_row_head
#undef JOIN
#undef JOIN_
