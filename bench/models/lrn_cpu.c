/* Cross-channel LRN on CPU in float32: the forward in one pass over memory, the backward in one.
 *
 * The math is bench/models/lrn.py's (its docstring derives the backward). Built by
 * bench/models/lrn_native.py with the machine's C compiler and OpenMP, which resolves to the
 * OpenMP runtime torch has already loaded, so these loops share torch's threads.
 *
 * Two layouts, each a function pair:
 *   - rows: channels innermost (channels_last), `rows` rows of C channels. Rows are taken in
 *     blocks of about BLOCK floats and each block is treated as one flat array: a channel
 *     window is then a shift of that array, masked where it would cross into the next row,
 *     so every inner loop runs over BLOCK contiguous floats whatever C is. (Inductor's kernel
 *     vectorises over C alone: 12 or 32 channels leave most of a 16-float vector masked.)
 *   - planes: NCHW, `n` images of C planes of `hw` floats. A block is a run of positions of
 *     one image, for every channel; the window runs over planes, the inner loops over positions.
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
        int64_t j = 0;
#if defined(__AVX512F__)
        /* d^-1/4 as rsqrt(sqrt(d)): the 14-bit estimate and one Newton step (~1 ulp) in place of a
         * second square root and a division, the two slowest vector instructions here */
        const __m512 va = _mm512_set1_ps(alpha), vk = _mm512_set1_ps(k);
        const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f);
        for (; j + 16 <= m; j += 16) {
            __m512 s = _mm512_sqrt_ps(_mm512_fmadd_ps(va, _mm512_loadu_ps(sum + j), vk));
            __m512 q = _mm512_rsqrt14_ps(s);
            q = _mm512_mul_ps(q, _mm512_fnmadd_ps(_mm512_mul_ps(half, s), _mm512_mul_ps(q, q), three_halves));
            __m512 q3 = _mm512_mul_ps(_mm512_mul_ps(q, q), q);
            _mm512_storeu_ps(p + j, q3);
            _mm512_storeu_ps(pd + j, _mm512_mul_ps(_mm512_mul_ps(q3, q3), q));
        }
#elif defined(__AVX2__) && defined(__FMA__)
        const __m256 va = _mm256_set1_ps(alpha), vk = _mm256_set1_ps(k);
        const __m256 half = _mm256_set1_ps(0.5f), three_halves = _mm256_set1_ps(1.5f);
        for (; j + 8 <= m; j += 8) {
            __m256 s = _mm256_sqrt_ps(_mm256_fmadd_ps(va, _mm256_loadu_ps(sum + j), vk));
            __m256 q = _mm256_rsqrt_ps(s); /* 12 bits; one Newton step gives about 23 */
            q = _mm256_mul_ps(q, _mm256_fnmadd_ps(_mm256_mul_ps(half, s), _mm256_mul_ps(q, q), three_halves));
            __m256 q3 = _mm256_mul_ps(_mm256_mul_ps(q, q), q);
            _mm256_storeu_ps(p + j, q3);
            _mm256_storeu_ps(pd + j, _mm256_mul_ps(_mm256_mul_ps(q3, q3), q));
        }
#endif
        for (; j < m; j++) {
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
