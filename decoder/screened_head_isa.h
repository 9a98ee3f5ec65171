/* The vector code of screened_head_kernel.c for one instruction set. That file includes it once per
 * set, each time with the set's `#pragma GCC target` in force and with ISA (a suffix for the names
 * below), LANES (floats of one native vector), ROW_BLOCK (hidden rows that share a tile's loads) and
 * SUMS (sums per row and vector, so that consecutive multiply-adds do not wait on each other) and
 * PAIR_PRODUCTS (1: AVX512-BF16's products of bfloat16 pairs, the rows rounded too) defined (and
 * undefined again at its end):
 * AVX-512's 32 registers hold 12 rows of two sums, AVX2's 16 hold 5 rows of one per half tile. */
#define JOIN_(name, isa) name##_##isa
#define JOIN(name, isa) JOIN_(name, isa)
#define vfloat JOIN(vfloat, ISA)
#define vint JOIN(vint, ISA)
#define vfloat_unaligned JOIN(vfloat_unaligned, ISA)
#define vint_unaligned JOIN(vint_unaligned, ISA)
#define load JOIN(load, ISA)
#define store JOIN(store, ISA)
#define splat JOIN(splat, ISA)
#define chosen_of JOIN(chosen_of, ISA)
#define lane_sum JOIN(lane_sum, ISA)
#define lane_max JOIN(lane_max, ISA)
#define exact_logit JOIN(exact_logit, ISA)
#define exact_argmax JOIN(exact_argmax, ISA)
#define tile_bounds JOIN(tile_bounds, ISA)
#define tile_bounds_of JOIN(tile_bounds_of, ISA)
#define screened_argmax JOIN(screened_argmax, ISA)

#define HALVES (TILE / LANES) /* vectors of one tile's tokens */
#define operand JOIN(operand, ISA)

/* What the screen multiplies a row's weights by: its float32 values, or with PAIR_PRODUCTS its values
 * rounded to bfloat16, a pair per uint32 (prepared_pairs). */
#if PAIR_PRODUCTS
typedef uint32_t operand;
#define OPERANDS(dim) ((dim) / 2)
#else
typedef float operand;
#define OPERANDS(dim) (dim)
#endif

typedef float vfloat __attribute__((vector_size(LANES * 4)));
typedef int32_t vint __attribute__((vector_size(LANES * 4)));
typedef float vfloat_unaligned __attribute__((vector_size(LANES * 4), aligned(4), may_alias));
typedef int32_t vint_unaligned __attribute__((vector_size(LANES * 4), aligned(4), may_alias));

static inline __attribute__((always_inline)) vfloat load(const float *p) { return *(const vfloat_unaligned *)p; }
static inline __attribute__((always_inline)) void store(float *p, vfloat v) { *(vfloat_unaligned *)p = v; }
static inline __attribute__((always_inline)) vfloat splat(float value) { return (vfloat){0} + value; }

/* Lanes of `yes` where `mask` is set, of `no` elsewhere. */
static inline __attribute__((always_inline)) vfloat chosen_of(vint mask, vfloat yes, vfloat no) {
    return (vfloat)(((vint)yes & mask) | ((vint)no & ~mask));
}

static inline __attribute__((always_inline)) float lane_sum(vfloat v) {
    float sum = v[0];
    for (int i = 1; i < LANES; i++) sum += v[i];
    return sum;
}

static inline __attribute__((always_inline)) float lane_max(vfloat v) {
    float most = v[0];
    for (int i = 1; i < LANES; i++) most = v[i] > most ? v[i] : most;
    return most;
}

/* A float32 logit as the candidates' is computed: one fixed order, so that the same token always
 * gets the same value (under one instruction set). dim is a multiple of 16. */
static float exact_logit(const float *weight, const float *hidden, int64_t dim) {
    vfloat sum = load(weight) * load(hidden);
    for (int64_t d = LANES; d < dim; d += LANES) sum += load(weight + d) * load(hidden + d);
    return lane_sum(sum);
}

/* Every token in float32, torch.argmax's rule: the first NaN, else the first largest. */
static int64_t exact_argmax(const float *weight, const float *hidden, int64_t vocab, int64_t dim) {
    int64_t best = 0;
    float top = -INFINITY;
    for (int64_t v = 0; v < vocab; v++) {
        const float logit = exact_logit(weight + v * dim, hidden, dim);
        if (isnan(logit)) return v;
        if (logit > top || v == 0) top = logit, best = v;
    }
    return best;
}

/* Rows [first, first + count) (count <= ROW_BLOCK) against tile t: the approximate logits, from the
 * tile's pairs of dimensions (16 tokens' two bfloat16 weights as 32-bit lanes, widened to float32 by
 * a shift and a mask, each multiplied by the row's float32 value of that dimension; or with
 * PAIR_PRODUCTS multiplied as pairs by the row's rounded pair); then each
 * token's upper end (approx + M) stored in `upper`, and the lower end (approx - M) raising the row's
 * running maximum in `lowest`. Padded tokens take -inf at both. */
static inline __attribute__((always_inline)) void tile_bounds(const Head *head, int64_t t, const operand *rows_in,
                                                              const Scale *scales, const int64_t count, float *upper,
                                                              vfloat *lowest) {
    const int64_t dim = head->dim, half_dim = dim / 2, token = t * TILE;
    const uint32_t *tile = head->tiles + t * half_dim * TILE;
    vfloat sums[ROW_BLOCK][HALVES][SUMS];
    for (int64_t r = 0; r < ROW_BLOCK; r++)
        for (int h = 0; h < HALVES; h++)
            for (int s = 0; s < SUMS; s++) sums[r][h][s] = (vfloat){0};
    /* Each line of the tile comes with a prefetch of the next tile's same line: the hardware's own
     * prefetcher left a thread at ~13 GB/s once rows made it compute as well, and 64 lines ahead was
     * too close once a tile's rows took longer than the memory's latency (8-24 rows: 10-15% slower,
     * ad hoc). */
#if PAIR_PRODUCTS
#if LANES != 16 || SUMS != 2
#error "the pair products take a tile as one vector, with two sums per row"
#endif
    /* Both sides bfloat16: one instruction multiplies a lane's pair of weights by the row's pair of
     * values and adds both products; two sums per row take even and odd pairs. */
    for (int64_t j = 0; j < half_dim; j += 2) {
        __builtin_prefetch(tile + (j + half_dim) * TILE, 0, 3);
        __builtin_prefetch(tile + (j + 1 + half_dim) * TILE, 0, 3);
        const __m512bh even = (__m512bh)_mm512_loadu_si512(tile + j * TILE),
                       odd = (__m512bh)_mm512_loadu_si512(tile + (j + 1) * TILE);
        for (int64_t r = 0; r < ROW_BLOCK; r++)
            if (r < count) {
                const uint32_t *values = rows_in + r * half_dim + j;
                sums[r][0][0] = (vfloat)_mm512_dpbf16_ps((__m512)sums[r][0][0], even,
                                                         (__m512bh)_mm512_set1_epi32((int)values[0]));
                sums[r][0][1] = (vfloat)_mm512_dpbf16_ps((__m512)sums[r][0][1], odd,
                                                         (__m512bh)_mm512_set1_epi32((int)values[1]));
            }
    }
#else
    for (int64_t j = 0; j < half_dim; j++) {
        __builtin_prefetch(tile + (j + half_dim) * TILE, 0, 3);
        for (int h = 0; h < HALVES; h++) {
            const vint pair = *(const vint_unaligned *)(tile + j * TILE + h * LANES);
            const vfloat first = (vfloat)(pair << 16), second = (vfloat)(pair & (int32_t)0xffff0000u);
            for (int64_t r = 0; r < ROW_BLOCK; r++)
                if (r < count) {
                    sums[r][h][0] += first * rows_in[r * dim + 2 * j];
                    sums[r][h][SUMS - 1] += second * rows_in[r * dim + 2 * j + 1];
                }
        }
    }
#endif
    for (int h = 0; h < HALVES; h++) {
        const int64_t at = token + h * LANES;
        vint real;
        for (int i = 0; i < LANES; i++) real[i] = at + i < head->vocab ? -1 : 0;
        const vfloat error = load(head->error + at), largest = load(head->largest + at), nothing = splat(-INFINITY);
        for (int64_t r = 0; r < ROW_BLOCK; r++)
            if (r < count) {
                const vfloat approx = SUMS == 2 ? sums[r][h][0] + sums[r][h][SUMS - 1] : sums[r][h][0];
                const vfloat margin = error * scales[r].by_error + (largest * scales[r].by_largest + 1e-6f);
                const vfloat low = chosen_of(real, approx - margin, nothing);
                lowest[r] = chosen_of(low > lowest[r], low, lowest[r]);
                store(upper + r * head->padded_vocab + at, chosen_of(real, approx + margin, nothing));
            }
    }
}

/* tile_bounds with its row count a constant, so that its loops over rows unroll without a branch. */
static void tile_bounds_of(const Head *head, int64_t t, const operand *rows_in, const Scale *scales, int64_t count,
                           float *upper, vfloat *lowest) {
    switch (count) {
#define ROWS(n) \
    case n: tile_bounds(head, t, rows_in, scales, n, upper, lowest); break;
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5)
#if ROW_BLOCK == 12
        ROWS(6) ROWS(7) ROWS(8) ROWS(9) ROWS(10) ROWS(11) ROWS(12)
#elif ROW_BLOCK != 5
#error "ROW_BLOCK must be 5 or 12"
#endif
#undef ROWS
    }
}

/* One row's answer: the float32 logits of the tokens whose upper end reaches the largest lower end
 * `floor`, the first largest. */
static int64_t screened_argmax(const Head *head, const float *hidden, const float *upper, float floor) {
    int64_t best = -1;
    float top = -INFINITY;
    const vfloat bar = splat(floor);
    for (int64_t v = 0; v < head->padded_vocab; v += LANES) {
        const vint maybe = load(upper + v) >= bar;
        vint any = maybe;
        for (int i = 1; i < LANES; i++) any[0] |= maybe[i];
        if (!any[0]) continue;
        for (int i = 0; i < LANES; i++) {
            if (!maybe[i]) continue;
            const float logit = exact_logit(head->weight + (v + i) * head->dim, hidden, head->dim);
            if (best < 0 || logit > top) top = logit, best = v + i;
        }
    }
    return best;
}

/* The kernel for this instruction set: each row's greedy token into chosen[rows]; `upper` is scratch
 * of rows x padded_vocab floats, `lowest` of threads x rows vectors of 64 bytes, `pairs` of rows x
 * dim / 2, `scales` and `screened` of rows. */
static void JOIN(screened_tokens, ISA)(const Head *head, const float *hidden, int64_t rows, float *upper,
                                      void *lowest_scratch, int64_t threads, uint32_t *pairs, Scale *scales,
                                      int *screened, int64_t *chosen) {
    const int64_t dim = head->dim, tiles = head->padded_vocab / TILE;
    vfloat *lowest = lowest_scratch;
#if PAIR_PRODUCTS
    for (int64_t r = 0; r < rows; r++)
        screened[r] = prepared_pairs(hidden + r * dim, dim, scales + r, pairs + r * OPERANDS(dim));
    const operand *rows_in = pairs;
#else
    (void)pairs;
    for (int64_t r = 0; r < rows; r++) screened[r] = prepared_row(hidden + r * dim, dim, scales + r);
    const operand *rows_in = hidden;
#endif
    for (int64_t i = 0; i < threads * rows; i++) lowest[i] = splat(-INFINITY);
    /* Rows in blocks of equal size (13 rows as 7 + 6, not 12 + 1: a block's sums are its parallel chains). */
    const int64_t blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK, block = (rows + blocks - 1) / blocks;
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        vfloat *own = lowest + omp_get_thread_num() * rows;
#else
        vfloat *own = lowest;
#endif
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++)
            for (int64_t first = 0; first < rows; first += block)
                tile_bounds_of(head, t, rows_in + first * OPERANDS(dim), scales + first,
                               rows - first < block ? rows - first : block,
                               upper + first * head->padded_vocab, own + first);
    }
#pragma omp parallel for schedule(static) if (rows >= 4)
    for (int64_t r = 0; r < rows; r++) {
        vfloat most = lowest[r];
        for (int64_t thread = 1; thread < threads; thread++)
            most = chosen_of(lowest[thread * rows + r] > most, lowest[thread * rows + r], most);
        const float floor = lane_max(most);
        chosen[r] = screened[r] && isfinite(floor)
                        ? screened_argmax(head, hidden + r * dim, upper + r * head->padded_vocab, floor)
                        : exact_argmax(head->weight, hidden + r * dim, head->vocab, dim);
    }
}

#undef HALVES
#undef OPERANDS
#undef operand
#undef vfloat
#undef vint
#undef vfloat_unaligned
#undef vint_unaligned
#undef load
#undef store
#undef splat
#undef chosen_of
#undef lane_sum
#undef lane_max
#undef exact_logit
#undef exact_argmax
#undef tile_bounds
#undef tile_bounds_of
#undef screened_argmax
#undef JOIN
#undef JOIN_
#undef ISA
#undef LANES
#undef ROW_BLOCK
#undef SUMS
#undef PAIR_PRODUCTS
