/* CPU decode-step ops, float32: the fused ops of model.decode (the same as kernels/norm.cu, rope_kv.cu and
   attention.cu on a GPU), one call each instead of the ten-odd torch ops each replaces.

   KV pools are [X, Hkv, Y, D] with element strides sx, sh, sy (D contiguous): a contiguous cache's rows (X rows of
   Y = max_seq_len positions) or a paged cache's blocks (Y = block_size). Sequence b's token at position p lives
   in block tables[b * ncols + p / Y] at offset p % Y (a contiguous cache: tables = [[row]] and Y = its length).
   Built with cpu_gemv.c into one library by tuner/backends/cpu_kernels.py. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>

/* e^x in 16 lanes (Cephes' expf: x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6 polynomial, times 2^n), x clamped
   to [-87.3, 88.7]: within 1 ulp of e^x rounded, over 19.1M points of [-87, 88]. glibc vectorizes expf only
   under -ffast-math, and its scalar expf per element cost silu_mul 93 us a layer at batch 8 against 8.5. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(e, n);
}

/* the first min(left, 16) lanes: a loop's last, partial vector */
static inline __mmask16 lanes16(int left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u); }
#endif

/* x [B, D] += delta (if given); h = x * rsqrt(mean(x^2) + eps) * w */
void tuner_add_rms_norm(float *x, const float *delta, const float *w, float eps, float *h, int B, int D) {
    for (int b = 0; b < B; b++) {
        float *xb = x + (int64_t)b * D, *hb = h + (int64_t)b * D;
        if (delta) {
            const float *db = delta + (int64_t)b * D;
#pragma omp simd
            for (int i = 0; i < D; i++) xb[i] += db[i];
        }
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < D; i++) ss += xb[i] * xb[i];
        const float r = 1.0f / sqrtf(ss / (float)D + eps);
#pragma omp simd
        for (int i = 0; i < D; i++) hb[i] = xb[i] * r * w[i];
    }
}

/* gu [B, 2F] (gate, then up) -> out [B, F] = silu(gate) * up */
void tuner_silu_mul(const float *gu, float *out, int B, int F) {
    for (int b = 0; b < B; b++) {
        const float *g = gu + (int64_t)b * 2 * F, *u = g + F;
        float *o = out + (int64_t)b * F;
        int i = 0;
#if defined(__AVX512F__)
        for (; i < F; i += 16) {
            const __mmask16 k = lanes16(F - i);
            const __m512 gv = _mm512_maskz_loadu_ps(k, g + i), uv = _mm512_maskz_loadu_ps(k, u + i);
            const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv)));
            _mm512_mask_storeu_ps(o + i, k, _mm512_mul_ps(_mm512_div_ps(gv, d), uv));
        }
#endif
        for (; i < F; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* qkv [B, (H + 2 Hkv) * D] (row stride ld): q/k RMSNorm per head (qk_norm [H + Hkv, D], if given), RoPE on q and
   k at positions pos[b] (cos, sin [*, D], sin sign-folded: out[d] = x[d] cos[d] + x[(d + D/2) % D] sin[d]), k and
   v into the pools; q [B, H, D] out. */
void tuner_rope_kv_write(const float *qkv, int64_t ld, const float *qk_norm, float eps, const int32_t *pos,
                         const float *cos, const float *sin, float *kpool, float *vpool, int64_t sx, int64_t sh,
                         int64_t sy, const int32_t *tables, int ncols, int Y, float *q, int B, int H, int Hkv,
                         int D) {
    float x[1024];
    const int half = D / 2;
    for (int b = 0; b < B; b++) {
        const float *row = qkv + b * ld;
        const int p = pos[b];
        const float *c = cos + (int64_t)p * D, *s = sin + (int64_t)p * D;
        const int64_t at = (int64_t)tables[(int64_t)b * ncols + p / Y] * sx + (int64_t)(p % Y) * sy;
        for (int h = 0; h < H + Hkv; h++) {
            const float *in = row + (int64_t)h * D;
            float r = 1.0f;
            if (qk_norm) {
                float ss = 0.0f;
                for (int i = 0; i < D; i++) ss += in[i] * in[i];
                r = 1.0f / sqrtf(ss / (float)D + eps);
            }
            for (int i = 0; i < D; i++) x[i] = qk_norm ? in[i] * r * qk_norm[h * D + i] : in[i];
            float *out = h < H ? q + ((int64_t)b * H + h) * D : kpool + at + (int64_t)(h - H) * sh;
            for (int i = 0; i < half; i++) out[i] = x[i] * c[i] + x[i + half] * s[i];
            for (int i = half; i < D; i++) out[i] = x[i] * c[i] + x[i - half] * s[i];
        }
        for (int h = 0; h < Hkv; h++)
            memcpy(vpool + at + (int64_t)h * sh, row + (int64_t)(H + Hkv + h) * D, sizeof(float) * D);
    }
}

#if defined(__AVX512F__)
/* gq query heads (qh [gq, D], out o [gq, D]) of one sequence against their shared KV head, D = 16 nv, gq nv <= 16:
   q and the outputs in registers, each key and value row read once for all gq heads, a score one reduction of nv
   products, the softmax's exponentials 16 at a time. sc: gq n floats of scratch. A head's arithmetic is the same
   whatever gq is. */
static inline __attribute__((always_inline)) void attend16(const float *qh, const float *kpool, const float *vpool,
                                                           int64_t sx, int64_t sy, int64_t off, const int32_t *tb,
                                                           int Y, int n, float scale, float *sc, float *o,
                                                           const int gq, const int nv) {
    __m512 qv[4][8], ov[4][8];
    for (int g = 0; g < gq; g++)
        for (int v = 0; v < nv; v++) {
            qv[g][v] = _mm512_mul_ps(_mm512_loadu_ps(qh + g * 16 * nv + 16 * v), _mm512_set1_ps(scale));
            ov[g][v] = _mm512_setzero_ps();
        }
    for (int t0 = 0; t0 < n; t0 += Y) {  /* block by block: no division per key */
        const float *kb = kpool + (int64_t)tb[t0 / Y] * sx + off;
        const int len = n - t0 < Y ? n - t0 : Y;
        for (int j = 0; j < len; j++) {
            __m512 kv[8];
            for (int v = 0; v < nv; v++) kv[v] = _mm512_loadu_ps(kb + (int64_t)j * sy + 16 * v);
            for (int g = 0; g < gq; g++) {
                __m512 a = _mm512_mul_ps(qv[g][0], kv[0]);
                for (int v = 1; v < nv; v++) a = _mm512_fmadd_ps(qv[g][v], kv[v], a);
                sc[g * n + t0 + j] = _mm512_reduce_add_ps(a);
            }
        }
    }
    float inv[4];
    for (int g = 0; g < gq; g++) {
        float *s = sc + g * n;
        __m512 mv = _mm512_set1_ps(-INFINITY);
        int t = 0;
        for (; t + 16 <= n; t += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(s + t));
        float m = _mm512_reduce_max_ps(mv);
        for (; t < n; t++) m = s[t] > m ? s[t] : m;
        __m512 sv = _mm512_setzero_ps();
        const __m512 mb = _mm512_set1_ps(m);
        for (t = 0; t < n; t += 16) {
            const __mmask16 k = lanes16(n - t);
            const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + t), mb));
            _mm512_mask_storeu_ps(s + t, k, e);
            sv = _mm512_add_ps(sv, _mm512_maskz_mov_ps(k, e));
        }
        inv[g] = 1.0f / _mm512_reduce_add_ps(sv);
    }
    for (int t0 = 0; t0 < n; t0 += Y) {
        const float *vb = vpool + (int64_t)tb[t0 / Y] * sx + off;
        const int len = n - t0 < Y ? n - t0 : Y;
        for (int j = 0; j < len; j++) {
            __m512 vv[8];
            for (int v = 0; v < nv; v++) vv[v] = _mm512_loadu_ps(vb + (int64_t)j * sy + 16 * v);
            for (int g = 0; g < gq; g++) {
                const __m512 pt = _mm512_set1_ps(sc[g * n + t0 + j]);
                for (int v = 0; v < nv; v++) ov[g][v] = _mm512_fmadd_ps(pt, vv[v], ov[g][v]);
            }
        }
    }
    for (int g = 0; g < gq; g++)
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(o + g * 16 * nv + 16 * v, _mm512_mul_ps(ov[g][v], _mm512_set1_ps(inv[g])));
}

/* gq (1-4) and nv (1-8) as constants, so attend16's loops unroll into registers */
static void attend16_any(const float *qh, const float *kpool, const float *vpool, int64_t sx, int64_t sy, int64_t off,
                         const int32_t *tb, int Y, int n, float scale, float *sc, float *o, int gq, int nv) {
    switch (gq * 16 + nv) {
#define CASE(g, v) case g * 16 + v: attend16(qh, kpool, vpool, sx, sy, off, tb, Y, n, scale, sc, o, g, v); break;
        CASE(1, 1) CASE(1, 2) CASE(1, 3) CASE(1, 4) CASE(1, 5) CASE(1, 6) CASE(1, 7) CASE(1, 8)
        CASE(2, 1) CASE(2, 2) CASE(2, 3) CASE(2, 4) CASE(2, 5) CASE(2, 6) CASE(2, 7) CASE(2, 8)
        CASE(3, 1) CASE(3, 2) CASE(3, 3) CASE(3, 4) CASE(4, 1) CASE(4, 2) CASE(4, 3) CASE(4, 4)
#undef CASE
    default: break;
    }
}
#endif

/* out [B, H * D]: each query head of q [B, H, D] attends to the first seq_lens[b] positions of its KV head
   (query heads h share KV head h / G, G = H / Hkv); no keys: zeros. With AVX-512 and D a multiple of 16 up to 128,
   a task is up to 4 query heads of one KV head (attend16), each key and value row read once for them all: at
   batch 8, 160 keys and SmolLM2's 9/3 heads, a layer's attention took 63-69 us against 200-250 for one task per
   query head and the plain loops below, which read the K/V rows G times. Where that leaves fewer tasks than
   twice the threads (batch 1), a task is one head again, so the threads share the work. Returns 0, or -1 without
   scratch memory. */
int tuner_decode_attention(const float *q, const float *kpool, const float *vpool, int64_t sx, int64_t sh,
                           int64_t sy, const int32_t *tables, int ncols, int Y, const int32_t *seq_lens, float *out,
                           int B, int H, int Hkv, int D) {
    const int G = H / Hkv;
    int failed = 0;
    const float scale = 1.0f / sqrtf((float)D);
#if defined(__AVX512F__)
    if (D % 16 == 0 && D <= 128) {
        const int nv = D / 16;
        int c = G < 4 ? G : 4;  /* query heads a task */
        while (c * nv > 16) c--;
        if (B * Hkv * ((G + c - 1) / c) < 2 * omp_get_max_threads()) c = 1;
        const int chunks = (G + c - 1) / c;  /* tasks a KV head */
#pragma omp parallel for schedule(static) reduction(| : failed)
        for (int task = 0; task < B * Hkv * chunks; task++) {
            const int b = task / (Hkv * chunks), hk = task / chunks % Hkv, h0 = hk * G + task % chunks * c;
            const int gq = hk * G + G - h0 < c ? hk * G + G - h0 : c, n = seq_lens[b];
            float *o = out + ((int64_t)b * H + h0) * D;
            if (n <= 0) {
                memset(o, 0, sizeof(float) * (size_t)gq * D);
                continue;
            }
            float local[4096];  /* the scores: on the stack up to 4096 per task */
            float *sc = (size_t)gq * n <= 4096 ? local : malloc(sizeof(float) * (size_t)gq * n);
            if (!sc) {
                failed = 1;
                continue;
            }
            attend16_any(q + ((int64_t)b * H + h0) * D, kpool, vpool, sx, sy, hk * sh, tables + (int64_t)b * ncols, Y,
                         n, scale, sc, o, gq, nv);
            if (sc != local) free(sc);
        }
        return failed ? -1 : 0;
    }
#endif
#pragma omp parallel for schedule(static) reduction(| : failed)
    for (int task = 0; task < B * H; task++) {
        const int b = task / H, h = task % H, hk = h / G, n = seq_lens[b];
        float *o = out + (int64_t)task * D;
        memset(o, 0, sizeof(float) * D);
        if (n <= 0) continue;
        float *sc = malloc(sizeof(float) * (size_t)n);
        if (!sc) {
            failed = 1;
            continue;
        }
        const float *qh = q + (int64_t)task * D;
        const int32_t *tb = tables + (int64_t)b * ncols;
        float m = -INFINITY;
        for (int t0 = 0; t0 < n; t0 += Y) {  /* block by block: no division per key */
            const float *kb = kpool + (int64_t)tb[t0 / Y] * sx + hk * sh;
            const int len = n - t0 < Y ? n - t0 : Y;
            for (int j = 0; j < len; j++) {
                const float *k = kb + (int64_t)j * sy;
                float a = 0.0f;
#pragma omp simd reduction(+ : a)
                for (int i = 0; i < D; i++) a += qh[i] * k[i];
                sc[t0 + j] = a * scale;
                m = sc[t0 + j] > m ? sc[t0 + j] : m;
            }
        }
        float sum = 0.0f;
        for (int t = 0; t < n; t++) {
            sc[t] = expf(sc[t] - m);
            sum += sc[t];
        }
        const float inv = 1.0f / sum;
        for (int t0 = 0; t0 < n; t0 += Y) {
            const float *vb = vpool + (int64_t)tb[t0 / Y] * sx + hk * sh;
            const int len = n - t0 < Y ? n - t0 : Y;
            for (int j = 0; j < len; j++) {
                const float *v = vb + (int64_t)j * sy;
                const float pt = sc[t0 + j] * inv;
#pragma omp simd
                for (int i = 0; i < D; i++) o[i] += pt * v[i];
            }
        }
        free(sc);
    }
    return failed ? -1 : 0;
}

/* ---- the whole decode step's layers in one call ------------------------------------------------------------ */

void tuner_f32_gemv(const float *x, int M, int K, const float *w, const float *bias, float *y, int N);
void tuner_int8_gemv(const float *x, int M, int K, const int8_t *q, const uint16_t *scale, const float *bias,
                     float *y, int N);
int tuner_int4_gemv(const float *x, int M, int K, const uint8_t *packed, const uint16_t *scale, const uint16_t *zero,
                    const float *bias, int G, float *y, int N);

/* One linear layer's weight as cpu_gemv.c's kernels read it (tuner.backends.cpu_ops builds these once). */
typedef struct {
    int32_t kind;  /* 0: float32 w [N, K]; 1: int8 w [N, K] * scale [N]; 2: int4 nibbles w [N, K/2], groups of G */
    int32_t N, K, G;
    const void *w;
    const uint16_t *scale, *zero;  /* bf16 */
    const float *bias;             /* [N] or NULL */
} tuner_linear;

typedef struct {
    const float *attn_norm, *mlp_norm, *qk_norm;  /* qk_norm [H + Hkv, D] or NULL */
    float *kpool, *vpool;                         /* this layer's pools, all with strides sx, sh, sy */
    tuner_linear qkv, o, gate_up, down;
} tuner_layer;

static int run_linear(const tuner_linear *l, const float *x, int M, float *y) {
    switch (l->kind) {
    case 0: tuner_f32_gemv(x, M, l->K, (const float *)l->w, l->bias, y, l->N); return 0;
    case 1: tuner_int8_gemv(x, M, l->K, (const int8_t *)l->w, l->scale, l->bias, y, l->N); return 0;
    case 2: return tuner_int4_gemv(x, M, l->K, (const uint8_t *)l->w, l->scale, l->zero, l->bias, l->G, y, l->N);
    default: return -2;
    }
}

/* model.decode's layers, the same ops in the same order as the per-op path (tuner_add_rms_norm,
   tuner_rope_kv_write, tuner_decode_attention, tuner_silu_mul and the products), without returning to Python
   between them: x [B, dim] is the embedded tokens (updated in place to the last residual), h [B, dim] receives
   final_norm(x). Returns 0; -1 without scratch memory; -2 for an unknown weight kind. */
int tuner_decode_layers(const tuner_layer *L, int n_layers, const float *final_norm, float eps, float *x, float *h,
                        const int32_t *pos, const int32_t *seq_lens, const int32_t *tables, int ncols, int Y,
                        int64_t sx, int64_t sh, int64_t sy, const float *cos, const float *sin, int B, int H,
                        int Hkv, int D) {
    const int dim = L[0].o.N, F = L[0].gate_up.N / 2, W = L[0].qkv.N;
    const size_t n = (size_t)B * ((size_t)W + (size_t)H * D * 2 + (size_t)dim + 3 * (size_t)F);
    float *buf = malloc(sizeof(float) * n);
    if (!buf) return -1;
    float *qkv = buf, *q = qkv + (size_t)B * W, *att = q + (size_t)B * H * D, *d = att + (size_t)B * H * D;
    float *gu = d + (size_t)B * dim, *m = gu + (size_t)B * 2 * F;
    int rc = 0;
    tuner_add_rms_norm(x, NULL, L[0].attn_norm, eps, h, B, dim);
    for (int i = 0; i < n_layers && !rc; i++) {
        const tuner_layer *l = &L[i];
        if ((rc = run_linear(&l->qkv, h, B, qkv))) break;
        tuner_rope_kv_write(qkv, W, l->qk_norm, eps, pos, cos, sin, l->kpool, l->vpool, sx, sh, sy, tables, ncols, Y,
                            q, B, H, Hkv, D);
        if ((rc = tuner_decode_attention(q, l->kpool, l->vpool, sx, sh, sy, tables, ncols, Y, seq_lens, att, B, H,
                                         Hkv, D)))
            break;
        if ((rc = run_linear(&l->o, att, B, d))) break;
        tuner_add_rms_norm(x, d, l->mlp_norm, eps, h, B, dim);
        if ((rc = run_linear(&l->gate_up, h, B, gu))) break;
        tuner_silu_mul(gu, m, B, F);
        if ((rc = run_linear(&l->down, m, B, d))) break;
        tuner_add_rms_norm(x, d, i + 1 < n_layers ? L[i + 1].attn_norm : final_norm, eps, h, B, dim);
    }
    free(buf);
    return rc;
}
