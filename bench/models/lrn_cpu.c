/* Cross-channel LRN on CPU in float32: the forward in one pass over memory, the backward in one.
 *
 * The math is bench/models/lrn.py's (its docstring derives the backward). Built by
 * bench/models/lrn_native.py with the machine's C compiler and OpenMP, which resolves to the
 * OpenMP runtime torch has already loaded, so these loops share torch's threads.
 *
 * Two layouts, each a function pair:
 *   - rows: channels innermost (channels_last), `rows` rows of C channels, as one flat array:
 *     a channel window is a shift of that array, masked where it would cross into the next
 *     row, so every inner loop runs at full vector width whatever C is. (Inductor's kernel
 *     vectorises over C alone: 12 or 32 channels leave most of a 16-float vector masked.)
 *   - planes: NCHW, `n` images of C planes of `hw` floats: vectors run over positions, the
 *     window over planes.
 * With AVX-512 or AVX2 (and FMA) and beta = 3/4, the paper's, the vector code keeps the window,
 * the power and the product in registers (below, "vectorised"). Otherwise, the block code
 * (after it): rows in blocks of about BLOCK floats, planes in runs of positions for every
 * channel, through buffers the compiler vectorises.
 * The backward recomputes the denominator from x rather than reading a saved one, and keeps
 * t_c = g_c a_c d_c^(-beta-1) in the block's buffer: it never goes to memory.
 * Each function returns 0, or 1 when its buffers could not be allocated.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define BLOCK 2048 /* floats per block: its handful of buffers stay in L1/L2 */

/* p[j] = d^-beta and pd[j] = d^(-beta-1), for d = k + alpha * sum[j]. Two loops, so that the
 * paper's beta = 3/4 vectorises: d^-1/4 = 1/sqrt(sqrt(d)) needs no expf/logf calls. */
static void powers(float *restrict p, float *restrict pd, const float *restrict sum, int64_t m, float alpha,
                   float beta, float k) {
    if (beta == 0.75f) {
        /* builds with AVX2+FMA take beta 3/4 in the vector code, so here only windows reaching over 16 */
        for (int64_t j = 0; j < m; j++) {
            float q = 1.0f / sqrtf(sqrtf(k + alpha * sum[j]));
            float q3 = q * q * q;
            p[j] = q3;
            pd[j] = q3 * q3 * q;
        }
    } else {
        for (int64_t j = 0; j < m; j++) {
            float d = k + alpha * sum[j];
            p[j] = expf(logf(d) * -beta);
            pd[j] = p[j] / d;
        }
    }
}

/* ---- vectorised: AVX-512 or AVX2 with FMA, beta = 3/4 -------------------------------
 * rows: the whole tensor as one flat array of floats, LANES at a time (16 with AVX-512, 8
 * with AVX2). Each lane knows its channel (a vector of channel numbers, advanced by LANES
 * mod C per vector), so the window's term at offset o is x + j + o with the lanes whose
 * channel + o falls outside the row masked off: the sum, the power and the product stay in
 * registers, whatever C is. Plain loads and stores where the whole vector is in range,
 * masked ones only at the tensor's ends (a first version masked throughout was no faster
 * than the block code on an AMD EPYC). The backward goes by chunks of CHUNK floats:
 * t = g a d^(-beta-1) for the chunk and 16 floats either side (the window's reach, at most
 * 16), and d^-beta for the chunk, into two stack buffers; then dx from them.
 * planes: vectors over a plane's positions, the window over neighbouring planes; the
 * backward by runs of positions across all planes, through two buffers per thread.
 * The block code below does other betas, reaches over 16, and CPUs without AVX2 and FMA. */

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define VECTOR_CODE 1
#define CHUNK 1024 /* floats: the backward's two buffers stay in L1 */
#define INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 lanes_t;
#define ALL_LANES ((__mmask16)0xFFFF)
INLINE vf v_set(float f) { return _mm512_set1_ps(f); }
INLINE vf v_load(const float *p) { return _mm512_loadu_ps(p); }
INLINE void v_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
INLINE vf v_load_masked(const float *p, lanes_t m) { return _mm512_maskz_loadu_ps(m, p); }
INLINE void v_store_masked(float *p, vf v, lanes_t m) { _mm512_mask_storeu_ps(p, m, v); }
INLINE vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
INLINE vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vf v_fnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }
INLINE vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
INLINE vf v_add_where(vf s, vf w, lanes_t m) { return _mm512_mask_add_ps(s, m, s, w); }
INLINE vf v_fma_where(vf a, vf b, vf s, lanes_t m) { return _mm512_mask3_fmadd_ps(a, b, s, m); }
INLINE vi i_set(int32_t i) { return _mm512_set1_epi32(i); }
INLINE vi i_load(const int32_t *p) { return _mm512_loadu_si512(p); }
INLINE lanes_t i_at_least(vi a, int32_t b, lanes_t m) { return m & _mm512_cmpge_epi32_mask(a, i_set(b)); }
INLINE lanes_t i_below(vi a, int32_t b, lanes_t m) { return m & _mm512_cmplt_epi32_mask(a, i_set(b)); }
INLINE vi i_wrap(vi ch, vi step, vi c) { /* ch + step, less c where that reaches c */
    ch = _mm512_add_epi32(ch, step);
    return _mm512_mask_sub_epi32(ch, _mm512_cmpge_epi32_mask(ch, c), ch, c);
}
INLINE lanes_t first_lanes(int64_t n) { return n >= LANES ? ALL_LANES : (lanes_t)((1u << n) - 1u); }
/* d^-1/4, d = k + alpha s, with no square root or division (the slowest vector instructions):
 * r ~ d^-1/2 and r rsqrt(r) ~ d^-1/4 from two 14-bit estimates, then one Newton step on
 * q^-4 = d, q (5 - d q^4) / 4, leaving about 1e-8 of relative error */
INLINE vf quarter_rsqrt(vf s, vf alpha, vf k) {
    vf d = v_fma(alpha, s, k), r = _mm512_rsqrt14_ps(d);
    vf q = v_mul(r, _mm512_rsqrt14_ps(r)), q2 = v_mul(q, q);
    return v_mul(q, v_fnma(v_set(0.25f), v_mul(d, v_mul(q2, q2)), v_set(1.25f)));
}
#else
#define LANES 8
typedef __m256 vf;
typedef __m256i vi;
typedef __m256i lanes_t; /* all ones in a lane that takes part */
INLINE vf v_set(float f) { return _mm256_set1_ps(f); }
INLINE vf v_load(const float *p) { return _mm256_loadu_ps(p); }
INLINE void v_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
INLINE vf v_load_masked(const float *p, lanes_t m) { return _mm256_maskload_ps(p, m); }
INLINE void v_store_masked(float *p, vf v, lanes_t m) { _mm256_maskstore_ps(p, m, v); }
INLINE vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
INLINE vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vf v_fnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
INLINE vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
INLINE vf v_add_where(vf s, vf w, lanes_t m) { return _mm256_add_ps(s, _mm256_and_ps(w, _mm256_castsi256_ps(m))); }
INLINE vf v_fma_where(vf a, vf b, vf s, lanes_t m) {
    return _mm256_fmadd_ps(_mm256_and_ps(a, _mm256_castsi256_ps(m)), b, s);
}
INLINE vi i_set(int32_t i) { return _mm256_set1_epi32(i); }
INLINE vi i_load(const int32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE lanes_t i_at_least(vi a, int32_t b, lanes_t m) {
    return _mm256_and_si256(m, _mm256_cmpgt_epi32(a, i_set(b - 1)));
}
INLINE lanes_t i_below(vi a, int32_t b, lanes_t m) { return _mm256_and_si256(m, _mm256_cmpgt_epi32(i_set(b), a)); }
INLINE vi i_wrap(vi ch, vi step, vi c) {
    ch = _mm256_add_epi32(ch, step);
    return _mm256_sub_epi32(ch, _mm256_andnot_si256(_mm256_cmpgt_epi32(c, ch), c));
}
INLINE lanes_t first_lanes(int64_t n) {
    return _mm256_cmpgt_epi32(i_set((int32_t)(n < LANES ? n : LANES)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* d^-1/4 as rsqrt(sqrt(d)): the 12-bit estimate and one Newton step */
INLINE vf quarter_rsqrt(vf s, vf alpha, vf k) {
    vf r = _mm256_sqrt_ps(v_fma(alpha, s, k)), q = _mm256_rsqrt_ps(r);
    return v_mul(q, v_fnma(v_mul(v_set(0.5f), r), v_mul(q, q), v_set(1.5f)));
}
#endif

/* the channels of the lanes of the vector at flat index j */
INLINE vi lane_channels(int64_t j, int64_t c) {
    int32_t ch[LANES];
    for (int i = 0; i < LANES; i++) ch[i] = (int32_t)((j + i) % c);
    return i_load(ch);
}

/* lanes (of `live`) whose channel + o exists */
INLINE lanes_t has_neighbour(vi ch, int64_t o, int64_t c, lanes_t live) {
    if (o < 0) return i_at_least(ch, (int32_t)-o, live);
    if (o > 0) return i_below(ch, (int32_t)(c - o), live);
    return live;
}

/* sum over o in lo..hi of v[o]^2 (squares) or v[o], over the lanes' existing neighbours.
 * `inside`: v + lo .. v + LANES + hi is readable, so plain loads; else masked ones, which
 * never touch memory in a masked lane. */
INLINE vf window(const float *v, vi ch, int64_t lo, int64_t hi, int64_t c, lanes_t live, int squares, int inside) {
    vf s = v_set(0.0f);
    for (int64_t o = lo; o <= hi; o++) {
        lanes_t m = has_neighbour(ch, o, c, live);
        if (inside) {
            vf w = v_load(v + o);
            s = squares ? v_fma_where(w, w, s, m) : v_add_where(s, w, m);
        } else {
            vf w = v_load_masked(v + o, m);
            s = squares ? v_fma(w, w, s) : v_add(s, w);
        }
    }
    return s;
}

INLINE vf load(const float *from, lanes_t live, int full) { return full ? v_load(from) : v_load_masked(from, live); }

INLINE void store(float *to, vf v, lanes_t live, int full) {
    if (full)
        v_store(to, v);
    else
        v_store_masked(to, v, live);
}

/* y for [from, to) */
INLINE void forward_span(const float *x, float *y, int64_t from, int64_t to, int64_t total, int64_t c,
                         int64_t before, int64_t after, vf alpha, vf k) {
    const vi vc = i_set((int32_t)c), step = i_set((int32_t)(LANES % c));
    vi ch = lane_channels(from, c);
    for (int64_t j = from; j < to; j += LANES, ch = i_wrap(ch, step, vc)) {
        int full = total - j >= LANES, inside = j >= before && j + LANES + after <= total;
        lanes_t live = first_lanes(total - j);
        vf s = inside ? window(x + j, ch, -before, after, c, live, 1, 1)
                      : window(x + j, ch, -before, after, c, live, 1, 0);
        vf q = quarter_rsqrt(s, alpha, k);
        store(y + j, v_mul(load(x + j, live, full), v_mul(v_mul(q, q), q)), live, full);
    }
}

/* dx for [start, end): t for the chunk and 16 floats either side, d^-beta for the chunk, into
 * buffers; then dx from them */
INLINE void backward_chunk(const float *x, const float *g, float *dx, int64_t start, int64_t end, int64_t total,
                           int64_t c, int64_t before, int64_t after, vf alpha, vf k, vf scale) {
    float t[CHUNK + 32], p[CHUNK]; /* t[i] is t at start - 16 + i; p[i] is d^-beta at start + i */
    const vi vc = i_set((int32_t)c), step = i_set((int32_t)(LANES % c));
    int64_t from = start >= 16 ? start - 16 : 0, to = end + 16 < total ? end + 16 : total;
    vi ch = lane_channels(from, c);
    for (int64_t j = from; j < to; j += LANES, ch = i_wrap(ch, step, vc)) {
        int full = to - j >= LANES, inside = j >= before && j + LANES + after <= total;
        lanes_t live = first_lanes(to - j);
        vf s = inside ? window(x + j, ch, -before, after, c, live, 1, 1)
                      : window(x + j, ch, -before, after, c, live, 1, 0);
        vf q = quarter_rsqrt(s, alpha, k), q3 = v_mul(v_mul(q, q), q);
        vf ga = v_mul(load(g + j, live, full), load(x + j, live, full));
        store(t + (j - start + 16), v_mul(ga, v_mul(v_mul(q3, q3), q)), live, full);
        if (j >= start && j < end) store(p + (j - start), q3, live, full);
    }
    ch = lane_channels(start, c);
    for (int64_t j = start; j < end; j += LANES, ch = i_wrap(ch, step, vc)) {
        int full = end - j >= LANES;
        lanes_t live = first_lanes(end - j);
        /* input i feeds outputs i - after .. i + before: the forward's window, transposed. The
         * buffer is readable 16 floats either side of the chunk; lanes it lacks are masked off. */
        vf s = window(t + (j - start + 16), ch, -after, before, c, live, 0, 1);
        vf gp = v_mul(load(g + j, live, full), load(p + (j - start), live, full));
        store(dx + j, v_fnma(v_mul(scale, load(x + j, live, full)), s, gp), live, full);
    }
}

static void rows_forward_fast(const float *x, float *y, int64_t total, int64_t c, int64_t before, int64_t after,
                              float alpha, float k) {
    const vf va = v_set(alpha), vk = v_set(k);
    int64_t chunks = (total + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < chunks; b++) {
        int64_t end = (b + 1) * CHUNK < total ? (b + 1) * CHUNK : total;
        if (before == 2 && after == 2) /* the paper's window, unrolled */
            forward_span(x, y, b * CHUNK, end, total, c, 2, 2, va, vk);
        else
            forward_span(x, y, b * CHUNK, end, total, c, before, after, va, vk);
    }
}

static void rows_backward_fast(const float *x, const float *g, float *dx, int64_t total, int64_t c, int64_t before,
                               int64_t after, float alpha, float beta, float k) {
    const vf va = v_set(alpha), vk = v_set(k), scale = v_set(2.0f * alpha * beta);
    int64_t chunks = (total + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < chunks; b++) {
        int64_t end = (b + 1) * CHUNK < total ? (b + 1) * CHUNK : total;
        if (before == 2 && after == 2)
            backward_chunk(x, g, dx, b * CHUNK, end, total, c, 2, 2, va, vk, scale);
        else
            backward_chunk(x, g, dx, b * CHUNK, end, total, c, before, after, va, vk, scale);
    }
}

/* sum of the squares of planes lo..hi (`hw` apart) at x */
INLINE vf plane_squares(const float *x, int64_t hw, int64_t lo, int64_t hi, lanes_t live, int full) {
    vf s = v_set(0.0f);
    for (int64_t o = lo; o <= hi; o++) {
        vf w = load(x + o * hw, live, full);
        s = v_fma(w, w, s);
    }
    return s;
}

/* y of one plane: no masks but at the plane's end */
INLINE void forward_plane(const float *x, float *y, int64_t hw, int64_t lo, int64_t hi, vf alpha, vf k) {
    for (int64_t j = 0; j < hw; j += LANES) {
        int full = hw - j >= LANES;
        lanes_t live = first_lanes(hw - j);
        vf s = plane_squares(x + j, hw, lo, hi, live, full);
        vf q = quarter_rsqrt(s, alpha, k);
        store(y + j, v_mul(load(x + j, live, full), v_mul(v_mul(q, q), q)), live, full);
    }
}

static void planes_forward_fast(const float *x, float *y, int64_t images, int64_t c, int64_t hw, int64_t before,
                                int64_t after, float alpha, float k) {
    const vf va = v_set(alpha), vk = v_set(k);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < images * c; b++) {
        int64_t ch = b % c, lo = ch < before ? -ch : -before, hi = ch + after >= c ? c - 1 - ch : after;
        if (lo == -2 && hi == 2) /* the paper's window away from the edges, unrolled */
            forward_plane(x + b * hw, y + b * hw, hw, -2, 2, va, vk);
        else
            forward_plane(x + b * hw, y + b * hw, hw, lo, hi, va, vk);
    }
}

/* positions per backward block: a multiple of LANES, about 65,536 floats over all c planes
 * (two 256 KB buffers, in L2 on the CPUs measured). Long runs keep the hardware prefetcher on
 * each plane: with 4,096 floats (32 positions a plane at 96 channels) the backward of
 * 128x96x32x32 took 32 ms on a 2-core AMD EPYC, with 16,384 or 65,536 13-19 ms. */
static int64_t vector_run(int64_t c, int64_t hw) {
    int64_t vectors = 65536 / c / LANES, most = (hw + LANES - 1) / LANES;
    vectors = vectors < 1 ? 1 : vectors > most ? most : vectors;
    return vectors * LANES;
}

/* t = g a d^(-beta-1) and d^-beta of `m` positions of one plane into the block's buffers */
INLINE void backward_terms(const float *x, const float *g, float *t, float *p, int64_t hw, int64_t m, int64_t lo,
                           int64_t hi, vf alpha, vf k) {
    for (int64_t j = 0; j < m; j += LANES) {
        int full = m - j >= LANES;
        lanes_t live = first_lanes(m - j);
        vf s = plane_squares(x + j, hw, lo, hi, live, full);
        vf q = quarter_rsqrt(s, alpha, k), q3 = v_mul(v_mul(q, q), q);
        vf ga = v_mul(load(g + j, live, full), load(x + j, live, full));
        store(t + j, v_mul(ga, v_mul(v_mul(q3, q3), q)), live, full);
        store(p + j, q3, live, full);
    }
}

/* dx of `m` positions of one plane from the block's buffers (t's planes `run` apart) */
INLINE void backward_plane(const float *x, const float *g, float *dx, const float *t, const float *p, int64_t run,
                           int64_t m, int64_t lo, int64_t hi, vf scale) {
    for (int64_t j = 0; j < m; j += LANES) {
        int full = m - j >= LANES;
        lanes_t live = first_lanes(m - j);
        vf s = v_set(0.0f);
        for (int64_t o = lo; o <= hi; o++) s = v_add(s, load(t + o * run + j, live, full));
        vf gp = v_mul(load(g + j, live, full), load(p + j, live, full));
        store(dx + j, v_fnma(v_mul(scale, load(x + j, live, full)), s, gp), live, full);
    }
}

static int planes_backward_fast(const float *x, const float *g, float *dx, int64_t images, int64_t c, int64_t hw,
                                int64_t before, int64_t after, float alpha, float beta, float k) {
    const vf va = v_set(alpha), vk = v_set(k), scale = v_set(2.0f * alpha * beta);
    int64_t run = vector_run(c, hw), runs = (hw + run - 1) / run;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *t = malloc(sizeof(float) * (size_t)(c * run)), *p = malloc(sizeof(float) * (size_t)(c * run));
        if (!t || !p) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < images * runs; b++) {
            if (failed) continue;
            int64_t j0 = (b % runs) * run, m = hw - j0 < run ? hw - j0 : run, at = (b / runs) * c * hw + j0;
            for (int64_t ch = 0; ch < c; ch++) {
                int64_t lo = ch < before ? -ch : -before, hi = ch + after >= c ? c - 1 - ch : after;
                const int64_t here = at + ch * hw;
                if (lo == -2 && hi == 2)
                    backward_terms(x + here, g + here, t + ch * run, p + ch * run, hw, m, -2, 2, va, vk);
                else
                    backward_terms(x + here, g + here, t + ch * run, p + ch * run, hw, m, lo, hi, va, vk);
            }
            for (int64_t ch = 0; ch < c; ch++) {
                /* input ch feeds outputs ch - after .. ch + before */
                int64_t lo = ch < after ? -ch : -after, hi = ch + before >= c ? c - 1 - ch : before;
                const int64_t here = at + ch * hw;
                if (lo == -2 && hi == 2)
                    backward_plane(x + here, g + here, dx + here, t + ch * run, p + ch * run, run, m, -2, 2, scale);
                else
                    backward_plane(x + here, g + here, dx + here, t + ch * run, p + ch * run, run, m, lo, hi, scale);
            }
        }
        free(t);
        free(p);
    }
    return failed;
}
#endif

/* which vector code this build runs: what bench.models.lrn_native.isa() reports */
const char *lrn_isa(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(VECTOR_CODE)
    return "avx2";
#else
    return "plain";
#endif
}

/* ---- rows: channels innermost ------------------------------------------------------ */

/* keep[(o + reach) * n + j]: whether channel (j % c) + o of element j's row exists. */
static int32_t *row_masks(int64_t n, int64_t c, int64_t reach) {
    int32_t *keep = malloc(sizeof(int32_t) * (size_t)(n * (2 * reach + 1)));
    if (!keep) return NULL;
    for (int64_t o = -reach; o <= reach; o++)
        for (int64_t j = 0; j < n; j++) {
            int64_t ch = j % c + o;
            keep[(o + reach) * n + j] = ch >= 0 && ch < c;
        }
    return keep;
}

/* out[j] = sum of v[j + o] for o in lo..hi where the channel exists; v has `reach` readable
 * floats either side (zeros at the block's ends). */
static void window_sum(float *restrict out, const float *restrict v, const int32_t *restrict keep, int64_t n,
                       int64_t reach, int64_t lo, int64_t hi) {
    if (lo == -2 && hi == 2) { /* the paper's window of 5: one pass, its terms in registers */
        const int32_t *restrict k0 = keep + (reach - 2) * n, *restrict k1 = keep + (reach - 1) * n;
        const int32_t *restrict k3 = keep + (reach + 1) * n, *restrict k4 = keep + (reach + 2) * n;
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            s += k0[j] ? v[j - 2] : 0.0f;
            s += k1[j] ? v[j - 1] : 0.0f;
            s += v[j];
            s += k3[j] ? v[j + 1] : 0.0f;
            s += k4[j] ? v[j + 2] : 0.0f;
            out[j] = s;
        }
        return;
    }
    for (int64_t j = 0; j < n; j++) out[j] = 0.0f;
    for (int64_t o = lo; o <= hi; o++) {
        const int32_t *restrict k = keep + (o + reach) * n;
        const float *restrict s = v + o;
        for (int64_t j = 0; j < n; j++) out[j] += k[j] ? s[j] : 0.0f;
    }
}

int lrn_rows_forward(const float *x, float *y, int64_t rows, int64_t c, int64_t before, int64_t after,
                     float alpha, float beta, float k) {
#if defined(VECTOR_CODE)
    if (beta == 0.75f && before <= 16 && after <= 16) {
        rows_forward_fast(x, y, rows * c, c, before, after, alpha, k);
        return 0;
    }
#endif
    int64_t per = c >= BLOCK ? 1 : BLOCK / c; /* rows per block */
    int64_t n = per * c, reach = before > after ? before : after;
    int32_t *keep = row_masks(n, c, reach);
    if (!keep) return 1;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *sq = calloc((size_t)(n + 2 * reach), sizeof(float)), *sum = malloc(sizeof(float) * (size_t)n);
        float *p = malloc(sizeof(float) * (size_t)n), *pd = malloc(sizeof(float) * (size_t)n);
        if (!sq || !sum || !p || !pd) failed = 1;
#pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < rows; r0 += per) {
            if (failed) continue;
            int64_t m = (rows - r0 < per ? rows - r0 : per) * c;
            const float *restrict xb = x + r0 * c;
            float *restrict yb = y + r0 * c, *restrict v = sq + reach;
            for (int64_t j = 0; j < m; j++) v[j] = xb[j] * xb[j];
            for (int64_t j = m; j < n; j++) v[j] = 0.0f;
            window_sum(sum, v, keep, n, reach, -before, after);
            powers(p, pd, sum, m, alpha, beta, k);
            for (int64_t j = 0; j < m; j++) yb[j] = xb[j] * p[j];
        }
        free(sq);
        free(sum);
        free(p);
        free(pd);
    }
    free(keep);
    return failed;
}

int lrn_rows_backward(const float *x, const float *g, float *dx, int64_t rows, int64_t c, int64_t before,
                      int64_t after, float alpha, float beta, float k) {
#if defined(VECTOR_CODE)
    if (beta == 0.75f && before <= 16 && after <= 16) {
        rows_backward_fast(x, g, dx, rows * c, c, before, after, alpha, beta, k);
        return 0;
    }
#endif
    int64_t per = c >= BLOCK ? 1 : BLOCK / c;
    int64_t n = per * c, reach = before > after ? before : after;
    int32_t *keep = row_masks(n, c, reach);
    if (!keep) return 1;
    const float scale = 2.0f * alpha * beta;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *sq = calloc((size_t)(n + 2 * reach), sizeof(float)), *t = calloc((size_t)(n + 2 * reach), sizeof(float));
        float *sum = malloc(sizeof(float) * (size_t)n), *p = malloc(sizeof(float) * (size_t)n);
        float *pd = malloc(sizeof(float) * (size_t)n);
        if (!sq || !t || !sum || !p || !pd) failed = 1;
#pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < rows; r0 += per) {
            if (failed) continue;
            int64_t m = (rows - r0 < per ? rows - r0 : per) * c;
            const float *restrict xb = x + r0 * c, *restrict gb = g + r0 * c;
            float *restrict dxb = dx + r0 * c, *restrict v = sq + reach, *restrict tv = t + reach;
            for (int64_t j = 0; j < m; j++) v[j] = xb[j] * xb[j];
            for (int64_t j = m; j < n; j++) v[j] = 0.0f;
            window_sum(sum, v, keep, n, reach, -before, after);
            powers(p, pd, sum, m, alpha, beta, k);
            for (int64_t j = 0; j < m; j++) tv[j] = gb[j] * xb[j] * pd[j];
            for (int64_t j = m; j < n; j++) tv[j] = 0.0f;
            /* input i feeds outputs i - after .. i + before: the forward's window, transposed */
            window_sum(sum, tv, keep, n, reach, -after, before);
            for (int64_t j = 0; j < m; j++) dxb[j] = gb[j] * p[j] - scale * xb[j] * sum[j];
        }
        free(sq);
        free(t);
        free(sum);
        free(p);
        free(pd);
    }
    free(keep);
    return failed;
}

/* ---- planes: NCHW -------------------------------------------------------------------- */

/* Positions per block: about BLOCK floats over all c planes, at least 16 (one vector). */
static int64_t plane_run(int64_t c, int64_t hw) {
    int64_t run = BLOCK / c < 16 ? 16 : BLOCK / c;
    return run < hw ? run : hw;
}

/* sum[j] = sum of planes[w * run + j] for w in lo..hi; a full window of 5 in one pass. */
static void plane_sum(float *restrict sum, const float *restrict planes, int64_t run, int64_t m, int64_t lo,
                      int64_t hi) {
    if (hi - lo == 4) {
        const float *restrict a = planes + lo * run, *restrict b = a + run, *restrict c = b + run;
        const float *restrict d = c + run, *restrict e = d + run;
        for (int64_t j = 0; j < m; j++) sum[j] = 0.0f + a[j] + b[j] + c[j] + d[j] + e[j];
        return;
    }
    for (int64_t j = 0; j < m; j++) sum[j] = 0.0f;
    for (int64_t w = lo; w <= hi; w++)
        for (int64_t j = 0; j < m; j++) sum[j] += planes[w * run + j];
}

int lrn_planes_forward(const float *x, float *y, int64_t images, int64_t c, int64_t hw, int64_t before,
                       int64_t after, float alpha, float beta, float k) {
#if defined(VECTOR_CODE)
    if (beta == 0.75f) {
        planes_forward_fast(x, y, images, c, hw, before, after, alpha, k);
        return 0;
    }
#endif
    int64_t run = plane_run(c, hw), runs = (hw + run - 1) / run;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *sq = malloc(sizeof(float) * (size_t)(c * run)), *sum = malloc(sizeof(float) * (size_t)run);
        float *p = malloc(sizeof(float) * (size_t)run), *pd = malloc(sizeof(float) * (size_t)run);
        if (!sq || !sum || !p || !pd) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < images * runs; b++) {
            if (failed) continue;
            int64_t j0 = (b % runs) * run, m = hw - j0 < run ? hw - j0 : run;
            const float *restrict xb = x + (b / runs) * c * hw + j0;
            float *restrict yb = y + (b / runs) * c * hw + j0;
            for (int64_t ch = 0; ch < c; ch++)
                for (int64_t j = 0; j < m; j++) sq[ch * run + j] = xb[ch * hw + j] * xb[ch * hw + j];
            for (int64_t ch = 0; ch < c; ch++) {
                int64_t lo = ch - before < 0 ? 0 : ch - before, hi = ch + after >= c ? c - 1 : ch + after;
                plane_sum(sum, sq, run, m, lo, hi);
                powers(p, pd, sum, m, alpha, beta, k);
                for (int64_t j = 0; j < m; j++) yb[ch * hw + j] = xb[ch * hw + j] * p[j];
            }
        }
        free(sq);
        free(sum);
        free(p);
        free(pd);
    }
    return failed;
}

int lrn_planes_backward(const float *x, const float *g, float *dx, int64_t images, int64_t c, int64_t hw,
                        int64_t before, int64_t after, float alpha, float beta, float k) {
#if defined(VECTOR_CODE)
    if (beta == 0.75f) return planes_backward_fast(x, g, dx, images, c, hw, before, after, alpha, beta, k);
#endif
    int64_t run = plane_run(c, hw), runs = (hw + run - 1) / run;
    const float scale = 2.0f * alpha * beta;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        size_t block = (size_t)(c * run);
        float *sq = malloc(sizeof(float) * block), *t = malloc(sizeof(float) * block);
        float *p = malloc(sizeof(float) * block), *sum = malloc(sizeof(float) * (size_t)run);
        float *pd = malloc(sizeof(float) * (size_t)run);
        if (!sq || !t || !p || !sum || !pd) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < images * runs; b++) {
            if (failed) continue;
            int64_t j0 = (b % runs) * run, m = hw - j0 < run ? hw - j0 : run;
            int64_t at = (b / runs) * c * hw + j0;
            const float *restrict xb = x + at, *restrict gb = g + at;
            float *restrict dxb = dx + at;
            for (int64_t ch = 0; ch < c; ch++)
                for (int64_t j = 0; j < m; j++) sq[ch * run + j] = xb[ch * hw + j] * xb[ch * hw + j];
            for (int64_t ch = 0; ch < c; ch++) {
                int64_t lo = ch - before < 0 ? 0 : ch - before, hi = ch + after >= c ? c - 1 : ch + after;
                plane_sum(sum, sq, run, m, lo, hi);
                powers(p + ch * run, pd, sum, m, alpha, beta, k);
                for (int64_t j = 0; j < m; j++) t[ch * run + j] = gb[ch * hw + j] * xb[ch * hw + j] * pd[j];
            }
            for (int64_t ch = 0; ch < c; ch++) {
                /* input ch feeds outputs ch - after .. ch + before */
                int64_t lo = ch - after < 0 ? 0 : ch - after, hi = ch + before >= c ? c - 1 : ch + before;
                plane_sum(sum, t, run, m, lo, hi);
                for (int64_t j = 0; j < m; j++)
                    dxb[ch * hw + j] = gb[ch * hw + j] * p[ch * run + j] - scale * xb[ch * hw + j] * sum[j];
            }
        }
        free(sq);
        free(t);
        free(p);
        free(sum);
        free(pd);
    }
    return failed;
}
