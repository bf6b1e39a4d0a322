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
#pragma omp simd
        for (int i = 0; i < F; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
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

/* out [B, H * D]: each query head of q [B, H, D] attends to the first seq_lens[b] positions of its KV head
   (query heads h share KV head h / (H / Hkv)); no keys: zeros. One task per (sequence, query head), so a
   batch-1 step still spreads its 9-odd heads over the threads. Returns 0, or -1 without scratch memory. */
int tuner_decode_attention(const float *q, const float *kpool, const float *vpool, int64_t sx, int64_t sh,
                           int64_t sy, const int32_t *tables, int ncols, int Y, const int32_t *seq_lens, float *out,
                           int B, int H, int Hkv, int D) {
    const int G = H / Hkv;
    int failed = 0;
    const float scale = 1.0f / sqrtf((float)D);
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
