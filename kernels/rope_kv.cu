// Decode: (Qwen3 per-head q/k RMSNorm) + rotary embedding on q and k + KV-cache write, one launch.
// grid (B, heads / 8): one warp per head of the fused qkv row [q heads | k heads | v heads].
// Token b sits at position positions[b]; the cache slot is block_tables[b][p / block_size] at
// p % block_size (a contiguous cache is the case block_size = max_seq_len, table[b][0] = b).
// Twin: tuner.backends.torch_ops.rope_kv_write.
//
// Build-time macros: HEAD_DIM (64 or 128), KV_INT8 (0: cache in the scalar type; 1: int8 + fp32 scale
// per token and head).
#if KV_INT8
typedef i8 kv_t;
#else
typedef u16 kv_t;
#endif
#define PAIRS (HEAD_DIM / 64)

extern "C" __global__ void __launch_bounds__(256) rope_kv_write(
    const u16* __restrict__ qkv, i64 qkv_stride, const u16* __restrict__ qk_norm, float eps,
    const int* __restrict__ positions, const u16* __restrict__ cos_t, const u16* __restrict__ sin_t,
    kv_t* __restrict__ k_pool, kv_t* __restrict__ v_pool, float* __restrict__ k_scale, float* __restrict__ v_scale,
    i64 sx, i64 sh, i64 sy, i64 ssx, i64 ssh,
    const int* __restrict__ block_tables, int max_blocks, int block_size,
    u16* __restrict__ q_out, int H, int Hkv)
{
    const int b = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int p = positions[b];
    const u16* row = qkv + (i64)b * qkv_stride;
    const int blk = block_tables[(i64)b * max_blocks + p / block_size], off = p % block_size;
    for (int hh = blockIdx.y * nw + warp; hh < H + 2 * Hkv; hh += nw * gridDim.y) {
        float lo[PAIRS], hi[PAIRS];
#pragma unroll
        for (int j = 0; j < PAIRS; j++) {
            int i = lane + 32 * j;
            lo[j] = to_f(row[(i64)hh * HEAD_DIM + i]);
            hi[j] = to_f(row[(i64)hh * HEAD_DIM + i + HEAD_DIM / 2]);
        }
        if (hh < H + Hkv) {
            if (qk_norm) {
                float ss = 0.f;
#pragma unroll
                for (int j = 0; j < PAIRS; j++) ss += lo[j] * lo[j] + hi[j] * hi[j];
                float rstd = rsqrtf(warp_sum(ss) / HEAD_DIM + eps);
#pragma unroll
                for (int j = 0; j < PAIRS; j++) {
                    int i = lane + 32 * j;
                    lo[j] = round_s(round_s(lo[j] * rstd) * to_f(qk_norm[(i64)hh * HEAD_DIM + i]));
                    hi[j] = round_s(round_s(hi[j] * rstd) * to_f(qk_norm[(i64)hh * HEAD_DIM + i + HEAD_DIM / 2]));
                }
            }
#pragma unroll
            for (int j = 0; j < PAIRS; j++) {
                int i = lane + 32 * j;
                const i64 t = (i64)p * HEAD_DIM;
                float c0 = to_f(cos_t[t + i]), s0 = to_f(sin_t[t + i]);
                float c1 = to_f(cos_t[t + i + HEAD_DIM / 2]), s1 = to_f(sin_t[t + i + HEAD_DIM / 2]);
                float a = round_s(round_s(lo[j] * c0) + hi[j] * s0);
                float c = round_s(round_s(hi[j] * c1) + lo[j] * s1);
                lo[j] = a;
                hi[j] = c;
            }
        }
        if (hh < H) {
            u16* dst = q_out + ((i64)b * H + hh) * HEAD_DIM;
#pragma unroll
            for (int j = 0; j < PAIRS; j++) {
                int i = lane + 32 * j;
                dst[i] = from_f(lo[j]);
                dst[i + HEAD_DIM / 2] = from_f(hi[j]);
            }
            continue;
        }
        const bool is_k = hh < H + Hkv;
        const int kvh = is_k ? hh - H : hh - H - Hkv;
        kv_t* dst = (is_k ? k_pool : v_pool) + (i64)blk * sx + (i64)kvh * sh + (i64)off * sy;
#if KV_INT8
        float amax = 0.f;
#pragma unroll
        for (int j = 0; j < PAIRS; j++) amax = fmaxf(amax, fmaxf(fabsf(lo[j]), fabsf(hi[j])));
        amax = warp_max(amax);
        const float scale = fmaxf(amax / 127.f, 1e-12f);
        if (lane == 0) (is_k ? k_scale : v_scale)[(i64)blk * ssx + (i64)kvh * ssh + off] = scale;
#pragma unroll
        for (int j = 0; j < PAIRS; j++) {
            int i = lane + 32 * j;
            dst[i] = (kv_t)fminf(fmaxf(rintf(lo[j] / scale), -127.f), 127.f);
            dst[i + HEAD_DIM / 2] = (kv_t)fminf(fmaxf(rintf(hi[j] / scale), -127.f), 127.f);
        }
#else
#pragma unroll
        for (int j = 0; j < PAIRS; j++) {
            int i = lane + 32 * j;
            dst[i] = from_f(lo[j]);
            dst[i + HEAD_DIM / 2] = from_f(hi[j]);
        }
#endif
    }
}
