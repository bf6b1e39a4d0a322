/* CPU weight-only int8 / int4 matrix products for decode: y[M, N] = x[M, K] @ W^T, float32 in and out.

   Weights are stored as the CUDA kernels store them (kernels/gemv.cu) and dequantized inside the dot
   product, in registers, so each weight byte is read from memory once per pass:
     int8: W[n, k] = q[n, k] * scale[n]                          q int8 [N, K], scale bf16 [N]
     int4: W[n, k] = (q[n, k] - 8) * scale[n, g] + zero[n, g]     packed uint8 [N, K/2] (low nibble = even k),
                                                                  scale, zero bf16 [N, K/G], g = k / G
   The int4 product is computed per group as scale * sum((q - 8) x) + zero * sum(x); sum(x) over each group,
   and x split into its even and odd elements (the low and high nibbles' inputs), are made once per call.
   Rows of W are split across OpenMP threads (torch's own runtime: the library is loaded after torch, whose
   libgomp.so.1 then serves it). Up to MAX_M rows of x share one pass over W.

   Built by tuner/backends/cpu_kernels.py with `gcc -O3 -march=native -fopenmp`. With AVX-512 the dot products
   are written in intrinsics (int8 and nibbles widened to float in registers, FMA into 16 lanes); elsewhere the
   plain loops below them run, as the compiler vectorizes them. */

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

/* sum_k w[k] x[k] over K int8 weights */
static inline float dot_i8(const int8_t *w, const float *x, int K) {
    int k = 0;
    float a = 0.0f;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + k))));
        __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + k + 16))));
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + k + 16), a1);
    }
    a = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#endif
    for (; k < K; k++) a += (float)w[k] * x[k];
    return a;
}

/* y[r] = sum_k w[r * K + k] x[k] for 4 rows r at once: x is loaded once for the 4, and 4 FMA chains overlap */
static inline void dot4_i8(const int8_t *w, const float *x, int K, float *y) {
    int k = 0;
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        const __m512 xv = _mm512_loadu_ps(x + k);
#define W(r) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + (int64_t)(r) * K + k))))
        a0 = _mm512_fmadd_ps(W(0), xv, a0);
        a1 = _mm512_fmadd_ps(W(1), xv, a1);
        a2 = _mm512_fmadd_ps(W(2), xv, a2);
        a3 = _mm512_fmadd_ps(W(3), xv, a3);
#undef W
    }
    a[0] = _mm512_reduce_add_ps(a0), a[1] = _mm512_reduce_add_ps(a1);
    a[2] = _mm512_reduce_add_ps(a2), a[3] = _mm512_reduce_add_ps(a3);
#endif
    for (; k < K; k++)
        for (int r = 0; r < 4; r++) a[r] += (float)w[(int64_t)r * K + k] * x[k];
    for (int r = 0; r < 4; r++) y[r] = a[r];
}

/* sum over the groups of one row of scale[g] * sum(q x) for int4 weights q in [0, 15] (HG = G/2 bytes a group,
   a multiple of 16), as 16 lanes; the -8 offset is folded into the zero term by the caller. 16 bytes widen to
   16 int32 lanes once (one shuffle); their low and high nibbles FMA with the even and odd inputs, and each
   group's sum is scaled into one of two accumulators (even and odd groups), so FMA chains overlap. */
#if defined(__AVX512F__)
static inline __m512 group_i4(const uint8_t *p, const float *e, const float *o, int HG) {
    const __m512i nib = _mm512_set1_epi32(15);
    __m512 t0 = _mm512_setzero_ps(), t1 = _mm512_setzero_ps();
    for (int j = 0; j < HG; j += 16) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + j)));
        t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, nib)), _mm512_loadu_ps(e + j), t0);
        t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), _mm512_loadu_ps(o + j), t1);
    }
    return _mm512_add_ps(t0, t1);
}

static inline __m512 row_i4(const uint8_t *p, const float *e, const float *o, const uint16_t *sc, int NG, int HG) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int g = 0;
    for (; g + 2 <= NG; g += 2) {
        a0 = _mm512_fmadd_ps(group_i4(p + g * HG, e + g * HG, o + g * HG, HG), _mm512_set1_ps(bf(sc[g])), a0);
        a1 = _mm512_fmadd_ps(group_i4(p + (g + 1) * HG, e + (g + 1) * HG, o + (g + 1) * HG, HG),
                             _mm512_set1_ps(bf(sc[g + 1])), a1);
    }
    if (g < NG) a0 = _mm512_fmadd_ps(group_i4(p + g * HG, e + g * HG, o + g * HG, HG), _mm512_set1_ps(bf(sc[g])), a0);
    return _mm512_add_ps(a0, a1);
}
#endif

void tuner_int8_gemv(const float *x, int M, int K, const int8_t *q, const uint16_t *scale, const float *bias,
                     float *y, int N) {
    for (int m0 = 0; m0 < M; m0 += MAX_M) {
        const int mb = M - m0 < MAX_M ? M - m0 : MAX_M;
        const float *xb = x + (int64_t)m0 * K;
        float *yb = y + (int64_t)m0 * N;
        const int N4 = N / 4;
#pragma omp parallel for schedule(static)
        for (int n4 = 0; n4 < N4 + (N % 4); n4++) {  /* blocks of 4 rows, then the last N % 4 rows one by one */
            const int n = n4 < N4 ? 4 * n4 : 4 * N4 + (n4 - N4), rows = n4 < N4 ? 4 : 1;
            for (int m = 0; m < mb; m++) {
                const float *xm = xb + (int64_t)m * K;
                float d[4];
                if (rows == 4)
                    dot4_i8(q + (int64_t)n * K, xm, K, d);
                else
                    d[0] = dot_i8(q + (int64_t)n * K, xm, K);
                for (int r = 0; r < rows; r++)
                    yb[(int64_t)m * N + n + r] = d[r] * bf(scale[n + r]) + (bias ? bias[n + r] : 0.0f);
            }
        }
    }
}

/* Returns 0, or -1 when the scratch buffer cannot be allocated. */
int tuner_int4_gemv(const float *x, int M, int K, const uint8_t *packed, const uint16_t *scale, const uint16_t *zero,
                    const float *bias, int G, float *y, int N) {
    const int H = K / 2, NG = K / G, HG = G / 2;
    float *xe = malloc(sizeof(float) * ((size_t)MAX_M * K + (size_t)MAX_M * NG));
    if (!xe) return -1;
    float *xo = xe + (size_t)MAX_M * H, *xsum = xe + (size_t)MAX_M * K;
    for (int m0 = 0; m0 < M; m0 += MAX_M) {
        const int mb = M - m0 < MAX_M ? M - m0 : MAX_M;
        for (int m = 0; m < mb; m++) {
            const float *xm = x + (int64_t)(m0 + m) * K;
            for (int j = 0; j < H; j++) {
                xe[m * H + j] = xm[2 * j];
                xo[m * H + j] = xm[2 * j + 1];
            }
            for (int g = 0; g < NG; g++) {
                float s = 0.0f;
                for (int k = g * G; k < (g + 1) * G; k++) s += xm[k];
                xsum[m * NG + g] = s;
            }
        }
        float *yb = y + (int64_t)m0 * N;
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const uint8_t *p = packed + (int64_t)n * H;
            const uint16_t *sc = scale + (int64_t)n * NG, *ze = zero + (int64_t)n * NG;
            for (int m = 0; m < mb; m++) {
                const float *e = xe + m * H, *o = xo + m * H, *xs = xsum + m * NG;
                float acc = 0.0f;
#if defined(__AVX512F__)
                if (HG % 16 == 0) {
                    for (int g = 0; g < NG; g++) acc += (bf(ze[g]) - 8.0f * bf(sc[g])) * xs[g];
                    acc += _mm512_reduce_add_ps(row_i4(p, e, o, sc, NG, HG));
                    yb[(int64_t)m * N + n] = acc + (bias ? bias[n] : 0.0f);
                    continue;
                }
#endif
                for (int g = 0; g < NG; g++) {
                    const uint8_t *pg = p + g * HG;
                    const float *eg = e + g * HG, *og = o + g * HG;
                    float a = 0.0f;
#pragma omp simd reduction(+ : a)
                    for (int j = 0; j < HG; j++)
                        a += (float)((int)(pg[j] & 15) - 8) * eg[j] + (float)((int)(pg[j] >> 4) - 8) * og[j];
                    acc += a * bf(sc[g]) + bf(ze[g]) * xs[g];
                }
                yb[(int64_t)m * N + n] = acc + (bias ? bias[n] : 0.0f);
            }
        }
    }
    free(xe);
    return 0;
}

/* y[M, N] = x[M, K] @ w[N, K]^T (+ bias), float32: each weight row is loaded once per MAX_M rows of x, which FMA
   into one accumulator each (a tied output projection read by 8 decode rows at once, where MKL's sgemm reads it
   slower than memory speed on a 2-core VM). */
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
