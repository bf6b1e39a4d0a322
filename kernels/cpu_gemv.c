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
    const __m512i nib = _mm512_set1_epi32(15);
    __m512 acc[MAX_M];
    for (int m = 0; m < mb; m++) acc[m] = _mm512_setzero_ps();
    for (int g = 0; g < NG; g++) {
        __m512 ga[MAX_M], gb[MAX_M];
        for (int m = 0; m < mb; m++) ga[m] = gb[m] = _mm512_setzero_ps();
        const uint8_t *pg = p + (int64_t)g * HG * 16;
        const float *xg = x + (int64_t)g * HG * 2;
        for (int j = 0; j < HG; j++) {
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(pg + j * 16)));
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, nib));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
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

/* y[r] = sum_k w[r * K + k] x[k] for 4 float32 rows r at once (x loaded once for the 4, 4 FMA chains) */
static inline void dot4_f32(const float *w, const float *x, int K, float *y) {
    int k = 0;
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        const __m512 xv = _mm512_loadu_ps(x + k);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), xv, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + K + k), xv, a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 2 * (int64_t)K + k), xv, a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 3 * (int64_t)K + k), xv, a3);
    }
    a[0] = _mm512_reduce_add_ps(a0), a[1] = _mm512_reduce_add_ps(a1);
    a[2] = _mm512_reduce_add_ps(a2), a[3] = _mm512_reduce_add_ps(a3);
#endif
    for (; k < K; k++)
        for (int r = 0; r < 4; r++) a[r] += w[(int64_t)r * K + k] * x[k];
    for (int r = 0; r < 4; r++) y[r] = a[r];
}

void tuner_f32_gemv(const float *x, int M, int K, const float *w, const float *bias, float *y, int N) {
    if (M == 1) {  /* one row of x: 4 weight rows a task, so 4 FMA chains overlap */
        const int N4 = N / 4;
#pragma omp parallel for schedule(static)
        for (int n4 = 0; n4 < N4 + (N % 4); n4++) {
            const int n = n4 < N4 ? 4 * n4 : 4 * N4 + (n4 - N4), rows = n4 < N4 ? 4 : 1;
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (rows == 4)
                dot4_f32(w + (int64_t)n * K, x, K, d);
            else
                for (int k = 0; k < K; k++) d[0] += w[(int64_t)n * K + k] * x[k];
            for (int r = 0; r < rows; r++) y[n + r] = d[r] + (bias ? bias[n + r] : 0.0f);
        }
        return;
    }
    for (int m0 = 0; m0 < M; m0 += MAX_M) {
        const int mb = M - m0 < MAX_M ? M - m0 : MAX_M;
        const float *xb = x + (int64_t)m0 * K;
        float *yb = y + (int64_t)m0 * N;
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *wn = w + (int64_t)n * K;
            float a[MAX_M] = {0};
            int k = 0;
#if defined(__AVX512F__)
            __m512 acc[MAX_M];
            for (int m = 0; m < mb; m++) acc[m] = _mm512_setzero_ps();
            for (; k + 16 <= K; k += 16) {
                const __m512 wv = _mm512_loadu_ps(wn + k);
                for (int m = 0; m < mb; m++) acc[m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb + (int64_t)m * K + k), acc[m]);
            }
            for (int m = 0; m < mb; m++) a[m] = _mm512_reduce_add_ps(acc[m]);
#endif
            for (; k < K; k++)
                for (int m = 0; m < mb; m++) a[m] += wn[k] * xb[(int64_t)m * K + k];
            for (int m = 0; m < mb; m++) yb[(int64_t)m * N + n] = a[m] + (bias ? bias[n] : 0.0f);
        }
    }
}
