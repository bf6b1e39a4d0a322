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

#ifndef FUSE_MERGE  // 1: the last partition of a (sequence, KV head) to finish merges them all (no merge_parts)
#define FUSE_MERGE 0
#endif

// Called by every thread of a block that wrote its partition's partial output. counters[b * Hkv + kvh] counts
// the finished partitions; the last of the `live` ones combines them and resets the counter for the next launch.
__device__ __forceinline__ void merge_if_last(int* counters, const float* part_out, const float* part_lse,
                                              int b, int kvh, int G, int H, int num_parts, int live, u16* out)
{
    __shared__ int s_last;
    __threadfence();  // this block's partials are visible device-wide before it is counted
    __syncthreads();
    if (threadIdx.x == 0) {
        int* c = counters + (i64)b * gridDim.x + kvh;
        s_last = atomicAdd(c, 1) == live - 1;
        if (s_last) *c = 0;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    for (int i = threadIdx.x; i < G * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        const i64 head = (i64)b * H + kvh * G + g;
        const float* lse = part_lse + head * num_parts;
        float M = -F_INF;
        for (int p = 0; p < live; p++) M = fmaxf(M, __ldcg(lse + p));
        float W = 0.f, A = 0.f;
        for (int p = 0; p < live; p++) {
            const float w = exp2f(__ldcg(lse + p) - M);
            W += w;
            A += w * __ldcg(part_out + (head * num_parts + p) * HEAD_DIM + d);
        }
        out[head * HEAD_DIM + d] = from_f(A / W);
    }
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32, 1) decode_attention(
    const u16* __restrict__ q, const kv_t* __restrict__ k_pool, const kv_t* __restrict__ v_pool,
    const float* __restrict__ k_scale, const float* __restrict__ v_scale,
    i64 sx, i64 sh, i64 sy, i64 ssx, i64 ssh,
    const int* __restrict__ block_tables, int max_blocks, int block_size, const int* __restrict__ seq_lens,
    int H, int Hkv, float scale_log2, int part_size,
    u16* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_lse, int* __restrict__ counters)
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
#if FUSE_MERGE
    if (num_parts > 1) merge_if_last(counters, part_out, part_lse, b, kvh, G, H, num_parts,
                                    (len + part_size - 1) / part_size, out);
#endif
}

// The same contract as decode_attention, in chunks of CH tokens and two passes per chunk (vLLM's paged
// attention does the same per partition): pass 1 spreads each K row over LG lanes, UK rows in flight per
// lane, and writes the scores to shared memory; the block then takes each query head's chunk max and turns
// the scores into weights; pass 2 accumulates weight * V with UK V rows in flight per lane. No per-token
// online-softmax chain, and the loads of a pass do not wait on the arithmetic of the rows before them.
#ifndef CH
#define CH 256
#endif
#ifndef UK
#define UK 4
#endif
#ifndef MINB  // blocks per SM the registers must allow
#define MINB 1
#endif
#ifndef ACC_SMEM  // 1: the accumulators wait in shared memory during pass 1 (fewer registers, more blocks per SM)
#define ACC_SMEM 0
#endif

extern "C" __global__ void __launch_bounds__(NWARPS * 32, MINB) decode_attention_chunked(
    const u16* __restrict__ q, const kv_t* __restrict__ k_pool, const kv_t* __restrict__ v_pool,
    const float* __restrict__ k_scale, const float* __restrict__ v_scale,
    i64 sx, i64 sh, i64 sy, i64 ssx, i64 ssh,
    const int* __restrict__ block_tables, int max_blocks, int block_size, const int* __restrict__ seq_lens,
    int H, int Hkv, float scale_log2, int part_size,
    u16* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_lse, int* __restrict__ counters)
{
    __shared__ float s_p[GMAX][CH];
#if ACC_SMEM
    __shared__ __align__(16) float s_acc[NS][GMAX][HEAD_DIM];
#else
    __shared__ float s_red[NWARPS][GMAX][HEAD_DIM];
#endif
    __shared__ float s_m[GMAX], s_l[GMAX], s_corr[GMAX];

    const int kvh = blockIdx.x, b = blockIdx.y, part = blockIdx.z, num_parts = gridDim.z;
    const int G = H / Hkv;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int slot = lane / LG, d0 = (lane % LG) * 8;
    const int len = seq_lens[b];
    const int start = part * part_size, end = min(start + part_size, len);

    if (start >= len) {
        if (threadIdx.x < G) part_lse[((i64)b * H + kvh * G + threadIdx.x) * num_parts + part] = -F_INF;
        return;
    }
    if (threadIdx.x < GMAX) {
        s_m[threadIdx.x] = -F_INF;
        s_l[threadIdx.x] = 0.f;
    }

    const int stream = warp * TPW + slot;
    float qf[GMAX][8];
#if ACC_SMEM
#define ACC_DECL float acc[GMAX][8];
#define ACC_LOAD(g) { const float4* a4 = (const float4*)&s_acc[stream][g][d0]; \
        const float4 x = a4[0], y = a4[1]; \
        acc[g][0] = x.x; acc[g][1] = x.y; acc[g][2] = x.z; acc[g][3] = x.w; \
        acc[g][4] = y.x; acc[g][5] = y.y; acc[g][6] = y.z; acc[g][7] = y.w; }
#define ACC_STORE(g) { float4* a4 = (float4*)&s_acc[stream][g][d0]; \
        a4[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]); \
        a4[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]); }
#else
    float acc[GMAX][8];
#define ACC_DECL
#define ACC_LOAD(g) {}
#define ACC_STORE(g) {}
#endif
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g < G) {
#if ACC_SMEM
#pragma unroll
            for (int j = 0; j < 8; j++) s_acc[stream][g][d0 + j] = 0.f;
#else
#pragma unroll
            for (int j = 0; j < 8; j++) acc[g][j] = 0.f;
#endif
            unpack8(*(const uint4*)(q + ((i64)b * H + kvh * G + g) * HEAD_DIM + d0), qf[g]);
#pragma unroll
            for (int j = 0; j < 8; j++) qf[g][j] *= scale_log2;
        }
    }

    const int* table = block_tables + (i64)b * max_blocks;
    const i64 head_off = (i64)kvh * sh + d0;
    for (int c0 = start; c0 < end; c0 += CH) {
        const int cn = min(CH, end - c0);
        // pass 1: scores. i0 is the same for every lane of a warp, so the shuffles stay in step.
        for (int i0 = warp * TPW; i0 < cn; i0 += NS * UK) {
            Row8 kr[UK];
            float ks[UK];
#pragma unroll
            for (int u = 0; u < UK; u++) {
                const int t = i0 + slot + u * NS;
                ks[u] = 1.f;
                if (t < cn) {
                    const int tt = c0 + t, blk = table[tt / block_size], off = tt % block_size;
                    load_row(k_pool + (i64)blk * sx + head_off + (i64)off * sy, kr[u]);
#if KV_INT8
                    ks[u] = k_scale[(i64)blk * ssx + (i64)kvh * ssh + off];
#endif
                } else {
                    kr[u].raw = {};
                }
            }
#pragma unroll
            for (int u = 0; u < UK; u++) {
                const int t = i0 + slot + u * NS;
                float kf[8];
                row_floats(kr[u], kf);
#pragma unroll
                for (int g = 0; g < GMAX; g++) {
                    if (g < G) {
                        float s = 0.f;
#pragma unroll
                        for (int j = 0; j < 8; j++) s += qf[g][j] * kf[j];
#pragma unroll
                        for (int o = LG / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                        if (t < cn && lane % LG == 0) s_p[g][t] = s * ks[u];
                    }
                }
            }
        }
        __syncthreads();
        // the chunk's max and weights per query head, one warp per head
        for (int g = warp; g < G; g += NWARPS) {
            float mx = -F_INF;
            for (int t = lane; t < cn; t += 32) mx = fmaxf(mx, s_p[g][t]);
            mx = warp_max(mx);
            const float m_old = s_m[g], m_new = fmaxf(m_old, mx);
            float sum = 0.f;
            for (int t = lane; t < cn; t += 32) {
                const float p = exp2f(s_p[g][t] - m_new);
                s_p[g][t] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float corr = exp2f(m_old - m_new);
                s_corr[g] = corr;
                s_l[g] = s_l[g] * corr + sum;
                s_m[g] = m_new;
            }
        }
        __syncthreads();
        // pass 2: acc = acc * corr + sum over the chunk of weight * V
        ACC_DECL
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g < G) {
                ACC_LOAD(g)
                const float corr = s_corr[g];
#pragma unroll
                for (int j = 0; j < 8; j++) acc[g][j] *= corr;
            }
        }
        for (int i0 = warp * TPW; i0 < cn; i0 += NS * UK) {
            Row8 vr[UK];
            float vs[UK];
#pragma unroll
            for (int u = 0; u < UK; u++) {
                const int t = i0 + slot + u * NS;
                if (t < cn) {
                    const int tt = c0 + t, blk = table[tt / block_size], off = tt % block_size;
                    load_row(v_pool + (i64)blk * sx + head_off + (i64)off * sy, vr[u]);
#if KV_INT8
                    vs[u] = v_scale[(i64)blk * ssx + (i64)kvh * ssh + off];
#else
                    vs[u] = 1.f;
#endif
                }
            }
#pragma unroll
            for (int u = 0; u < UK; u++) {
                const int t = i0 + slot + u * NS;
                if (t < cn) {
                    float vf[8];
                    row_floats(vr[u], vf);
#pragma unroll
                    for (int g = 0; g < GMAX; g++) {
                        if (g < G) {
                            const float pv = s_p[g][t] * vs[u];
#pragma unroll
                            for (int j = 0; j < 8; j++) acc[g][j] += pv * vf[j];
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g < G) ACC_STORE(g)
        }
        __syncthreads();  // the next chunk overwrites s_p
    }

#if ACC_SMEM
    for (int i = threadIdx.x; i < G * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        float A = 0.f;
#pragma unroll
        for (int w = 0; w < NS; w++) A += s_acc[w][g][d];
#else
    // sum the token slots of each warp (lanes LG apart hold the same dims), then the warps
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g < G) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float a = acc[g][j];
#pragma unroll
                for (int o = LG; o < 32; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                acc[g][j] = a;
            }
            if (slot == 0) {
#pragma unroll
                for (int j = 0; j < 8; j++) s_red[warp][g][d0 + j] = acc[g][j];
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        float A = 0.f;
#pragma unroll
        for (int w = 0; w < NWARPS; w++) A += s_red[w][g][d];
#endif
        const float L = s_l[g];
        const i64 head = (i64)b * H + kvh * G + g;
        if (num_parts == 1) {
            out[head * HEAD_DIM + d] = from_f(A / L);
        } else {
            part_out[(head * num_parts + part) * HEAD_DIM + d] = A / L;
            if (d == 0) part_lse[head * num_parts + part] = s_m[g] + log2f(L);
        }
    }
#if FUSE_MERGE
    if (num_parts > 1) merge_if_last(counters, part_out, part_lse, b, kvh, G, H, num_parts,
                                    (len + part_size - 1) / part_size, out);
#endif
}

#if !KV_INT8
// decode_attention with its K/V rows staged through shared memory by cp.async (16-bit caches only): a ring of
// STAGES tiles of TILE tokens, STAGES - 1 tiles in flight while the block computes on the oldest, so the
// loads no longer wait on the arithmetic. The arithmetic per token is decode_attention's.
#ifndef TILE
#define TILE 16
#endif
#ifndef STAGES
#define STAGES 4
#endif
#if TILE % NS
#error "TILE must be a multiple of the block's token streams NS"
#endif
#define RING_BYTES (STAGES * TILE * 2 * HEAD_DIM * 2)
#define ACC_BYTES (NS * GMAX * HEAD_DIM * 4)

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid)
{
    unsigned s;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(s) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void issue_tile(u16* ring, int tile, const u16* k_pool, const u16* v_pool,
                                           const int* table, int block_size, i64 sx, i64 sy, i64 head_base,
                                           int start, int end)
{
    u16* dst = ring + (i64)(tile % STAGES) * TILE * 2 * HEAD_DIM;
    for (int c = threadIdx.x; c < TILE * 2 * LG; c += NWARPS * 32) {
        const int tok = c / (2 * LG), kv = (c / LG) & 1, ch = c % LG;
        const int t = start + tile * TILE + tok;
        const bool valid = t < end;
        const u16* src = k_pool;
        if (valid) {
            const int blk = table[t / block_size], off = t % block_size;
            src = (kv ? v_pool : k_pool) + (i64)blk * sx + head_base + (i64)off * sy + ch * 8;
        }
        cp_async16(dst + (tok * 2 + kv) * HEAD_DIM + ch * 8, src, valid);
    }
    asm volatile("cp.async.commit_group;");
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32, 1) decode_attention_async(
    const u16* __restrict__ q, const kv_t* __restrict__ k_pool, const kv_t* __restrict__ v_pool,
    const float* __restrict__ k_scale, const float* __restrict__ v_scale,
    i64 sx, i64 sh, i64 sy, i64 ssx, i64 ssh,
    const int* __restrict__ block_tables, int max_blocks, int block_size, const int* __restrict__ seq_lens,
    int H, int Hkv, float scale_log2, int part_size,
    u16* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_lse, int* __restrict__ counters)
{
    __shared__ __align__(16) unsigned char smem[RING_BYTES > ACC_BYTES ? RING_BYTES : ACC_BYTES];
    __shared__ float s_m[NS][GMAX], s_l[NS][GMAX];
    u16* ring = (u16*)smem;

    const int kvh = blockIdx.x, b = blockIdx.y, part = blockIdx.z, num_parts = gridDim.z;
    const int G = H / Hkv;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int stream = warp * TPW + lane / LG, d0 = (lane % LG) * 8;
    const int len = seq_lens[b];
    const int start = part * part_size, end = min(start + part_size, len);

    if (start >= len) {
        if (threadIdx.x < G) part_lse[((i64)b * H + kvh * G + threadIdx.x) * num_parts + part] = -F_INF;
        return;
    }
    const int* table = block_tables + (i64)b * max_blocks;
    const int ntiles = (end - start + TILE - 1) / TILE;
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ntiles) issue_tile(ring, s, k_pool, v_pool, table, block_size, sx, sy, (i64)kvh * sh, start, end);
        else asm volatile("cp.async.commit_group;");
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

    for (int i = 0; i < ntiles; i++) {
        asm volatile("cp.async.wait_group %0;" ::"n"(STAGES - 2));
        __syncthreads();  // tile i is in, and every warp is done with the slot the next issue overwrites
        if (i + STAGES - 1 < ntiles)
            issue_tile(ring, i + STAGES - 1, k_pool, v_pool, table, block_size, sx, sy, (i64)kvh * sh, start, end);
        else
            asm volatile("cp.async.commit_group;");
        const u16* tile = ring + (i64)(i % STAGES) * TILE * 2 * HEAD_DIM;
        // TILE % NS == 0: every lane runs the same number of tokens, so the shuffles stay in step
#pragma unroll
        for (int tok = stream; tok < TILE; tok += NS) {
            const bool valid = start + i * TILE + tok < end;
            float kf[8], vf[8];
            unpack8(*(const uint4*)(tile + (tok * 2) * HEAD_DIM + d0), kf);
            unpack8(*(const uint4*)(tile + (tok * 2 + 1) * HEAD_DIM + d0), vf);
#pragma unroll
            for (int g = 0; g < GMAX; g++) {
                if (g < G) {
                    float s = 0.f;
#pragma unroll
                    for (int j = 0; j < 8; j++) s += qf[g][j] * kf[j];
#pragma unroll
                    for (int o = LG / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                    if (valid) {
                        const float m_new = fmaxf(m[g], s);
                        const float corr = exp2f(m[g] - m_new), p = exp2f(s - m_new);
                        l[g] = l[g] * corr + p;
#pragma unroll
                        for (int j = 0; j < 8; j++) acc[g][j] = acc[g][j] * corr + p * vf[j];
                        m[g] = m_new;
                    }
                }
            }
        }
    }
    asm volatile("cp.async.wait_group 0;");
    __syncthreads();  // the ring is free: it holds the streams' accumulators now

    float (*s_acc)[GMAX][HEAD_DIM] = (float (*)[GMAX][HEAD_DIM])smem;
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
#if FUSE_MERGE
    if (num_parts > 1) merge_if_last(counters, part_out, part_lse, b, kvh, G, H, num_parts,
                                    (len + part_size - 1) / part_size, out);
#endif
}
#endif

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
