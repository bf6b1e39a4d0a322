// Decode attention over a paged KV cache (a contiguous cache is one block of max_seq_len per sequence).
//
// grid (Hkv, B, num_parts), 128 threads. A block serves one KV head of one sequence over one partition of
// its context, for the whole query group G = H / Hkv, so each K/V row is read once. A token's row of
// HEAD_DIM values is spread over LG = HEAD_DIM / 8 lanes (16-byte loads for 16-bit caches, 8-byte loads for
// int8), so a warp reads 32 / LG tokens at once and each lane keeps an online softmax per query head in
// fp32. The block's token streams merge through shared memory. With num_parts == 1 the block writes the
// output; otherwise it writes a normalized partial output and its log2-sum-exp, and `merge_parts` combines
// the partitions (split-K / flash-decoding).
// Twin: tuner.backends.torch_ops.paged_decode_attention.
//
// Build-time macros: HEAD_DIM (64, 128), GMAX (largest query group served, <= 8), KV_INT8 (0, 1).
#if KV_INT8
typedef i8 kv_t;
#else
typedef u16 kv_t;
#endif
#define LG (HEAD_DIM / 8)
#define TPW (32 / LG)
#define NWARPS 4
#define NS (NWARPS * TPW)
#define UNROLL 2

struct Row8 {
#if KV_INT8
    uint2 raw;
#else
    uint4 raw;
#endif
};

__device__ __forceinline__ void load_row(const kv_t* p, Row8& r) {
#if KV_INT8
    r.raw = *(const uint2*)p;
#else
    r.raw = *(const uint4*)p;
#endif
}

__device__ __forceinline__ void row_floats(const Row8& r, float out[8]) {
#if KV_INT8
    unpack8_i8(r.raw, out);
#else
    unpack8(r.raw, out);
#endif
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32, 1) decode_attention(
    const u16* __restrict__ q, const kv_t* __restrict__ k_pool, const kv_t* __restrict__ v_pool,
    const float* __restrict__ k_scale, const float* __restrict__ v_scale,
    i64 sx, i64 sh, i64 sy, i64 ssx, i64 ssh,
    const int* __restrict__ block_tables, int max_blocks, int block_size, const int* __restrict__ seq_lens,
    int H, int Hkv, float scale_log2, int part_size,
    u16* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_lse)
{
    __shared__ float s_acc[NS][GMAX][HEAD_DIM];
    __shared__ float s_m[NS][GMAX], s_l[NS][GMAX];

    const int kvh = blockIdx.x, b = blockIdx.y, part = blockIdx.z, num_parts = gridDim.z;
    const int G = H / Hkv;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int stream = warp * TPW + lane / LG, d0 = (lane % LG) * 8;
    const int len = seq_lens[b];
    const int start = part * part_size, end = min(start + part_size, len);

    if (start >= len) {  // an empty partition (the grid covers the longest context the plan allows)
        if (threadIdx.x < G) part_lse[((i64)b * H + kvh * G + threadIdx.x) * num_parts + part] = -F_INF;
        return;
    }

    float qf[GMAX][8], acc[GMAX][8], m[GMAX], l[GMAX];
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        m[g] = -F_INF;
        l[g] = 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++) acc[g][j] = 0.f;
        if (g < G) {
            unpack8(*(const uint4*)(q + ((i64)b * H + kvh * G + g) * HEAD_DIM + d0), qf[g]);
#pragma unroll
            for (int j = 0; j < 8; j++) qf[g][j] *= scale_log2;
        }
    }

    const int* table = block_tables + (i64)b * max_blocks;
    const i64 head_off = (i64)kvh * sh + d0;
    // t0 is the same for every lane of a warp, so all 32 lanes run the loop (and its shuffles) together
    for (int t0 = start + warp * TPW; t0 < end; t0 += NS * UNROLL) {
        Row8 kr[UNROLL], vr[UNROLL];
        float ks[UNROLL], vs[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int t = t0 + lane / LG + u * NS;
            if (t < end) {
                const int blk = table[t / block_size], off = t % block_size;
                const i64 o = (i64)blk * sx + head_off + (i64)off * sy;
                load_row(k_pool + o, kr[u]);
                load_row(v_pool + o, vr[u]);
#if KV_INT8
                const i64 so = (i64)blk * ssx + (i64)kvh * ssh + off;
                ks[u] = k_scale[so];
                vs[u] = v_scale[so];
#else
                ks[u] = 1.f;
                vs[u] = 1.f;
#endif
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int t = t0 + lane / LG + u * NS;
            // every lane of a token group agrees on `valid`, so the group's shuffles below stay in step
            const bool valid = t < end;
            float kf[8], vf[8];
            row_floats(kr[u], kf);
            row_floats(vr[u], vf);
#pragma unroll
            for (int g = 0; g < GMAX; g++) {
                if (g < G) {
                    float s = 0.f;
#pragma unroll
                    for (int j = 0; j < 8; j++) s += qf[g][j] * kf[j];
#pragma unroll
                    for (int o = LG / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                    if (valid) {
                        s *= ks[u];
                        const float m_new = fmaxf(m[g], s);
                        const float corr = exp2f(m[g] - m_new), p = exp2f(s - m_new);
                        l[g] = l[g] * corr + p;
                        const float pv = p * vs[u];
#pragma unroll
                        for (int j = 0; j < 8; j++) acc[g][j] = acc[g][j] * corr + pv * vf[j];
                        m[g] = m_new;
                    }
                }
            }
        }
    }

    // merge the NS token streams of this block
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g < G) {
#pragma unroll
            for (int j = 0; j < 8; j++) s_acc[stream][g][d0 + j] = acc[g][j];
            if (lane % LG == 0) {
                s_m[stream][g] = m[g];
                s_l[stream][g] = l[g];
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        float M = -F_INF;
#pragma unroll
        for (int s = 0; s < NS; s++) M = fmaxf(M, s_m[s][g]);
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int s = 0; s < NS; s++) {
            const float w = s_m[s][g] == -F_INF ? 0.f : exp2f(s_m[s][g] - M);
            L += w * s_l[s][g];
            A += w * s_acc[s][g][d];
        }
        const i64 head = (i64)b * H + kvh * G + g;
        if (num_parts == 1) {
            out[head * HEAD_DIM + d] = from_f(A / L);
        } else {
            part_out[(head * num_parts + part) * HEAD_DIM + d] = A / L;
            if (d == 0) part_lse[head * num_parts + part] = M + log2f(L);
        }
    }
}

// grid (H, B), HEAD_DIM threads: combine the partitions of each (sequence, query head).
extern "C" __global__ void __launch_bounds__(HEAD_DIM) merge_parts(
    const float* __restrict__ part_out, const float* __restrict__ part_lse, int num_parts, int H,
    u16* __restrict__ out)
{
    const i64 head = (i64)blockIdx.y * H + blockIdx.x;
    const int d = threadIdx.x;
    const float* lse = part_lse + head * num_parts;
    float M = -F_INF;
    for (int p = 0; p < num_parts; p++) M = fmaxf(M, lse[p]);
    float W = 0.f, A = 0.f;
    for (int p = 0; p < num_parts; p++) {
        if (lse[p] == -F_INF) continue;
        const float w = exp2f(lse[p] - M);
        W += w;
        A += w * part_out[(head * num_parts + p) * HEAD_DIM + d];
    }
    out[head * HEAD_DIM + d] = from_f(A / W);
}
