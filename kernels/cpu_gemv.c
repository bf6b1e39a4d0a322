/* CPU weight-only int8 / int4 matrix products for decode: y[M, N] = x[M, K] @ W^T, float32 in and out.

   Weights are dequantized inside the dot product, in registers, so each weight byte is read from memory once per
   pass:
     int8: W[n, k] = q[n, k] * scale[n]
     int4: W[n, k] = (q[n, k] - 8) * scale[n, g] + zero[n, g]     g = k / G
   both in blocks of 16 rows interleaved (the layouts are at tuner_int8_gemv and tuner_int4_gemv).
   Rows of W are split across OpenMP threads (torch's own runtime: the library is loaded after torch, whose
   libgomp.so.1 then serves it). Up to MAX_M rows of x share one pass over W.

   Built by tuner/backends/cpu_kernels.py with `gcc -O3 -march=native -fopenmp`. With AVX-512 the dot products
   are written in intrinsics (int8 and nibbles widened to float in registers, FMA into 16 lanes); elsewhere the
   plain loops beside them run, as the compiler vectorizes them. */

#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define MAX_M 8
/* bytes ahead of its reads that the int8 and int4 loops ask for the next weights (the float32 loop asks for the
   next task's rows instead, at rows_f32): a decode step at batch 1 on SmolLM2 (int8, 2 threads, 2-core Xeon VM)
   took 12.5 ms with 2048-8192 against 15.4-17.7 ms with none (the hardware prefetchers alone let these loops, which
   consume 16 bytes every 3-7 instructions, stream about 10 GB/s of the 15.7 the float32 loop reaches); int4 11.0
   against 13.0 ms. */
#define PREFETCH 4096

/* bf16 (the upper half of a float32) to float */
static inline float bf(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* int8 weights, 16 rows interleaved (tuner.backends.cpu_kernels.pack_int8): row block b holds rows 16b..16b+15
   (zeros past N), element (b, k, r) = q[16b + r][k]; scale bf16 [16 NB]. A vector of 16 lanes is 16 rows at one
   input k: each weight is widened once and multiplied by every row of x broadcast (no horizontal sums). */
#if defined(__AVX512F__)
static inline __m512 bf16x16(const uint16_t *h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)h)), 16));
}

/* out[m] = the 16 rows' sums of q x, m < mb (a constant where it is inlined, so the m loops unroll); two
   accumulators per row of x (even and odd k) so FMA chains overlap */
static inline __attribute__((always_inline)) void i8_rows16(const int8_t *p, const float *x, int K, const int mb,
                                                            __m512 *out) {
    __m512 a[MAX_M], b[MAX_M];
    for (int m = 0; m < mb; m++) a[m] = b[m] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 2 <= K; k += 2) {
        if (!(k & 3)) _mm_prefetch((const char *)(p + k * 16 + PREFETCH), _MM_HINT_T0);
        const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + k * 16))));
        const __m512 w1 =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + (k + 1) * 16))));
        for (int m = 0; m < mb; m++) {
            a[m] = _mm512_fmadd_ps(w0, _mm512_set1_ps(x[(int64_t)m * K + k]), a[m]);
            b[m] = _mm512_fmadd_ps(w1, _mm512_set1_ps(x[(int64_t)m * K + k + 1]), b[m]);
        }
    }
    if (k < K) {
        const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + k * 16))));
        for (int m = 0; m < mb; m++) a[m] = _mm512_fmadd_ps(w0, _mm512_set1_ps(x[(int64_t)m * K + k]), a[m]);
    }
    for (int m = 0; m < mb; m++) out[m] = _mm512_add_ps(a[m], b[m]);
}
#endif

void tuner_int8_gemv(const float *x, int M, int K, const int8_t *packed, const uint16_t *scale, const float *bias,
                     float *y, int N) {
    const int NB = (N + 15) / 16;
    for (int m0 = 0; m0 < M; m0 += MAX_M) {
        const int mb = M - m0 < MAX_M ? M - m0 : MAX_M;
        const float *xb = x + (int64_t)m0 * K;
#pragma omp parallel for schedule(static)
        for (int b = 0; b < NB; b++) {
            const int8_t *p = packed + (int64_t)b * K * 16;
            const int rows = N - 16 * b < 16 ? N - 16 * b : 16;
#if defined(__AVX512F__)
            __m512 out[MAX_M];
            switch (mb) {
#define CASE(c) case c: i8_rows16(p, xb, K, c, out); break;
                CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
            }
            const __mmask16 keep = (__mmask16)((1u << rows) - 1u);
            const __m512 s = bf16x16(scale + 16 * b);
            const __m512 bv = bias ? _mm512_maskz_loadu_ps(keep, bias + 16 * b) : _mm512_setzero_ps();
            for (int m = 0; m < mb; m++)
                _mm512_mask_storeu_ps(y + (int64_t)(m0 + m) * N + 16 * b, keep, _mm512_fmadd_ps(out[m], s, bv));
#else
            for (int m = 0; m < mb; m++) {
                float acc[16] = {0};
                const float *xm = xb + (int64_t)m * K;
                for (int k = 0; k < K; k++)
                    for (int r = 0; r < 16; r++) acc[r] += (float)p[k * 16 + r] * xm[k];
                for (int r = 0; r < rows; r++)
                    y[(int64_t)(m0 + m) * N + 16 * b + r] = acc[r] * bf(scale[16 * b + r]) + (bias ? bias[16 * b + r] : 0.0f);
            }
#endif
        }
    }
}

/* int4 weights, 16 rows interleaved (tuner.backends.cpu_kernels.pack_int4): row block b holds rows 16b..16b+15
   (zeros past N); byte (b, j, r) = q[16b + r][2j] | q[16b + r][2j + 1] << 4, and scale, zero are [NB, K/G, 16]
   bf16. A vector of 16 lanes is then 16 rows at one input k: each weight byte is widened once and multiplied by
   each row of x broadcast (no horizontal sums), and a group's scales and zeros are one vector load each. Per group
   y += scale * sum(q x) + (zero - 8 scale) * sum(x). */
#if defined(__AVX512F__)
/* out[m] = the 16 rows' products with x row m, m < mb (a constant where it is inlined, so the m loops unroll) */
static inline __attribute__((always_inline)) void i4_rows16(const uint8_t *p, const uint16_t *sc, const uint16_t *ze,
                                                            const float *x, int K, const float *xs, int NG, int HG,
                                                            const int mb, __m512 *out) {
    /* vpermps reads an index's low 4 bits: a nibble's float is one lookup (no mask, no int-to-float convert) */
    const __m512 lut = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 acc[MAX_M];
    for (int m = 0; m < mb; m++) acc[m] = _mm512_setzero_ps();
    for (int g = 0; g < NG; g++) {
        __m512 ga[MAX_M], gb[MAX_M];
        for (int m = 0; m < mb; m++) ga[m] = gb[m] = _mm512_setzero_ps();
        const uint8_t *pg = p + (int64_t)g * HG * 16;
        const float *xg = x + (int64_t)g * HG * 2;
        for (int j = 0; j < HG; j++) {
            if (!(j & 3)) _mm_prefetch((const char *)(pg + j * 16 + PREFETCH), _MM_HINT_T0);
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(pg + j * 16)));
            const __m512 lo = _mm512_permutexvar_ps(v, lut), hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
            for (int m = 0; m < mb; m++) {
                ga[m] = _mm512_fmadd_ps(lo, _mm512_set1_ps(xg[(int64_t)m * K + 2 * j]), ga[m]);
                gb[m] = _mm512_fmadd_ps(hi, _mm512_set1_ps(xg[(int64_t)m * K + 2 * j + 1]), gb[m]);
            }
        }
        const __m512 s = bf16x16(sc + g * 16);
        const __m512 z = _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), s, bf16x16(ze + g * 16));
        for (int m = 0; m < mb; m++) {
            acc[m] = _mm512_fmadd_ps(_mm512_add_ps(ga[m], gb[m]), s, acc[m]);
            acc[m] = _mm512_fmadd_ps(z, _mm512_set1_ps(xs[m * NG + g]), acc[m]);
        }
    }
    for (int m = 0; m < mb; m++) out[m] = acc[m];
}
#endif

/* y[M, N] = x[M, K] @ W^T (+ bias) for W in the interleaved int4 layout above. Returns 0, or -1 when the sums of x
   cannot be allocated. */
int tuner_int4_gemv(const float *x, int M, int K, const uint8_t *packed, const uint16_t *scale, const uint16_t *zero,
                    const float *bias, int G, float *y, int N) {
    const int NG = K / G, HG = G / 2, NB = (N + 15) / 16;
    float *xsum = malloc(sizeof(float) * (size_t)M * NG);
    if (!xsum) return -1;
    for (int m = 0; m < M; m++)
        for (int g = 0; g < NG; g++) {
            float t = 0.0f;
            for (int k = g * G; k < (g + 1) * G; k++) t += x[(int64_t)m * K + k];
            xsum[m * NG + g] = t;
        }
    for (int m0 = 0; m0 < M; m0 += MAX_M) {
        const int mb = M - m0 < MAX_M ? M - m0 : MAX_M;
        const float *xb = x + (int64_t)m0 * K, *xs = xsum + (int64_t)m0 * NG;
#pragma omp parallel for schedule(static)
        for (int b = 0; b < NB; b++) {
            const uint8_t *p = packed + (int64_t)b * (K / 2) * 16;
            const uint16_t *sc = scale + (int64_t)b * NG * 16, *ze = zero + (int64_t)b * NG * 16;
            const int rows = N - 16 * b < 16 ? N - 16 * b : 16;
#if defined(__AVX512F__)
            __m512 out[MAX_M];
            switch (mb) {
#define CASE(c) case c: i4_rows16(p, sc, ze, xb, K, xs, NG, HG, c, out); break;
                CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
            }
            const __mmask16 keep = (__mmask16)((1u << rows) - 1u);
            const __m512 bv = bias ? _mm512_maskz_loadu_ps(keep, bias + 16 * b) : _mm512_setzero_ps();
            for (int m = 0; m < mb; m++)
                _mm512_mask_storeu_ps(y + (int64_t)(m0 + m) * N + 16 * b, keep, _mm512_add_ps(out[m], bv));
#else
            for (int m = 0; m < mb; m++) {
                float acc[16] = {0};
                const float *xm = xb + (int64_t)m * K;
                for (int g = 0; g < NG; g++) {
                    float ga[16] = {0};
                    for (int j = 0; j < HG; j++) {
                        const uint8_t *v = p + ((int64_t)g * HG + j) * 16;
                        const float e = xm[g * G + 2 * j], o = xm[g * G + 2 * j + 1];
                        for (int r = 0; r < 16; r++) ga[r] += (float)(v[r] & 15) * e + (float)(v[r] >> 4) * o;
                    }
                    for (int r = 0; r < 16; r++) {
                        const float s = bf(sc[g * 16 + r]);
                        acc[r] += ga[r] * s + (bf(ze[g * 16 + r]) - 8.0f * s) * xs[m * NG + g];
                    }
                }
                for (int r = 0; r < rows; r++) y[(int64_t)(m0 + m) * N + 16 * b + r] = acc[r] + (bias ? bias[16 * b + r] : 0.0f);
            }
#endif
        }
    }
    free(xsum);
    return 0;
}

/* The float32 weights [N, K] of the interleaved int8 and int4 layouts above, for a prefill's rows (which reuse a
   weight across many rows, so a dequantized weight and torch's matrix product beat a pass of these kernels per 8
   rows). The same arithmetic as quant.py's formulas in torch (built without FP contraction, -std=c11), so the same
   bits. A 3072 x 576 weight takes 0.6 ms (int8) and 1.6 ms (int4) against 2.7 and 16.5 through torch's transposes
   and elementwise ops (2 threads, 2-core Xeon VM). */
void tuner_int8_dequant(const int8_t *packed, const uint16_t *scale, int N, int K, float *out) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const int8_t *p = packed + (int64_t)(n / 16) * K * 16 + n % 16;
        const float s = bf(scale[n]);
        float *o = out + (int64_t)n * K;
        for (int k = 0; k < K; k++) o[k] = (float)p[k * 16] * s;
    }
}

void tuner_int4_dequant(const uint8_t *packed, const uint16_t *scale, const uint16_t *zero, int G, int N, int K,
                        float *out) {
    const int NG = K / G;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const int64_t b = n / 16, r = n % 16;
        const uint8_t *p = packed + b * (K / 2) * 16 + r;
        const uint16_t *sc = scale + b * NG * 16 + r, *ze = zero + b * NG * 16 + r;
        float *o = out + (int64_t)n * K;
        for (int g = 0; g < NG; g++) {
            const float s = bf(sc[g * 16]), z = bf(ze[g * 16]);
            for (int k = g * G; k < (g + 1) * G; k += 2) {
                const uint8_t v = p[(k / 2) * 16];
                o[k] = ((float)(v & 15) - 8.0f) * s + z;
                o[k + 1] = ((float)(v >> 4) - 8.0f) * s + z;
            }
        }
    }
}

/* y[m * N + r] = sum_k w[r * K + k] x[m * K + k] + bias[r] for R weight rows and MB rows of x (both at most 4,
   constants where it is inlined, so the loops unroll into R * MB accumulators in registers): each weight vector
   feeds MB FMAs and each x vector R, so a step loads R + MB vectors for R * MB FMAs. Every output sums its k in
   the same order whatever R and MB are, so a row's result does not depend on its batch. Each step also asks for
   pfn cache lines of pf onward (the next task's weights, below), which never faults, past the end included. */
static inline __attribute__((always_inline)) void tile_f32(const float *w, const float *x, int K, const int R,
                                                           const int MB, const float *bias, float *y, int64_t N,
                                                           const char *pf, const int pfn) {
    float a[4][4] = {{0.0f}};
    int k = 0;
#if defined(__AVX512F__)
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MB; m++) acc[r][m] = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < pfn; i++) _mm_prefetch(pf + ((int64_t)(k / 16) * pfn + i) * 64, _MM_HINT_T0);
        __m512 xv[4];
        for (int m = 0; m < MB; m++) xv[m] = _mm512_loadu_ps(x + (int64_t)m * K + k);
        for (int r = 0; r < R; r++) {
            const __m512 wv = _mm512_loadu_ps(w + (int64_t)r * K + k);
            for (int m = 0; m < MB; m++) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MB; m++) a[r][m] = _mm512_reduce_add_ps(acc[r][m]);
#else
    (void)pf;
    (void)pfn;
#endif
    for (; k < K; k++)
        for (int r = 0; r < R; r++)
            for (int m = 0; m < MB; m++) a[r][m] += w[(int64_t)r * K + k] * x[(int64_t)m * K + k];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MB; m++) y[(int64_t)m * N + r] = a[r][m] + (bias ? bias[r] : 0.0f);
}

/* R weight rows against every row of x, 4 at a time (the R rows, at most 16 KiB for K = 2048, stay in L1). The
   next task's R rows (contiguous after these, R K floats = R K / 16 cache lines) are prefetched meanwhile, spread
   over the T tiles: ceil(R / T) lines a step. Only the first tile reads these rows from memory, so without it the
   later tiles left the memory idle and the hardware prefetchers, which follow misses, stopped: SmolLM2's products
   at 8 rows of x took 36-39 ms against 47-54 (2 threads, 2-core Xeon VM, a 538 MB step from memory), at 2-4 rows
   31-35 against 36-54, at one row about the same (33 against 34, medians of 6). */
static inline __attribute__((always_inline)) void rows_f32(const float *w, const float *x, int M, int K, const int R,
                                                           const float *bias, float *y, int64_t N) {
    const int T = (M + 3) / 4, pfn = (R + T - 1) / T;
    const int64_t tile_bytes = (int64_t)(K / 16) * pfn * 64;  /* what one tile asks for */
    const char *pf = (const char *)(w + (int64_t)R * K);      /* the next task's rows, a tile's share at a time */
    int m = 0;
    for (; m + 4 <= M; m += 4, pf += tile_bytes)
        tile_f32(w, x + (int64_t)m * K, K, R, 4, bias, y + (int64_t)m * N, N, pf, pfn);
    const float *xm = x + (int64_t)m * K;
    float *ym = y + (int64_t)m * N;
    switch (M - m) {
    case 3: tile_f32(w, xm, K, R, 3, bias, ym, N, pf, pfn); break;
    case 2: tile_f32(w, xm, K, R, 2, bias, ym, N, pf, pfn); break;
    case 1: tile_f32(w, xm, K, R, 1, bias, ym, N, pf, pfn); break;
    default: break;
    }
}

/* float32 weights [N, K] as torch holds them: tasks of 4 weight rows (the last N % 4 one row each), split across
   threads, each against every row of x in tiles of 4 */
void tuner_f32_gemv(const float *x, int M, int K, const float *w, const float *bias, float *y, int N) {
    const int N4 = N / 4;
    if (M == 1) {  /* a lean loop for one row of x: rows_f32's dispatch cost it 5% on cache-resident layers */
#pragma omp parallel for schedule(static)
        for (int t = 0; t < N4 + (N % 4); t++) {
            const int n = t < N4 ? 4 * t : 4 * N4 + (t - N4);
            const float *b = bias ? bias + n : NULL, *wn = w + (int64_t)n * K;
            if (t < N4)
                tile_f32(wn, x, K, 4, 1, b, y + n, N, (const char *)(wn + 4 * (int64_t)K), 4);
            else
                tile_f32(wn, x, K, 1, 1, b, y + n, N, (const char *)(wn + K), 1);
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N4 + (N % 4); t++) {
        const int n = t < N4 ? 4 * t : 4 * N4 + (t - N4);
        const float *b = bias ? bias + n : NULL;
        if (t < N4)
            rows_f32(w + (int64_t)n * K, x, M, K, 4, b, y + n, N);
        else
            rows_f32(w + (int64_t)n * K, x, M, K, 1, b, y + n, N);
    }
}
