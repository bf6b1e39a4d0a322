// Decode attention over a paged KV cache (a contiguous cache is one block of max_seq_len per sequence).
//
// grid (Hkv, B, num_parts), 128 threads. A block serves one KV head of one sequence over one partition of
// its context, for the whole query group G = H / Hkv, so each K/V row is read once. A token's row of
// HEAD_DIM values is spread over LG = HEAD_DIM / 8 lanes (16-byte loads for 16-bit caches, 8-byte loads for
// int8), so a warp reads 32 / LG tokens at once; each lane takes UNROLL tokens per step and folds them into
// its online softmax (fp32, one per query head) with one rescale. The block's token streams merge through
// shared memory. With num_parts == 1 the block writes the output; otherwise it writes a normalized partial
// output and its log2-sum-exp, and `merge_parts` combines the partitions (split-K / flash-decoding).
// Twin: tuner.backends.torch_ops.decode_attention.
//
// The loop is bound by issued instructions, not bytes (NOTES-gpu.md entries 8-9, 12), so it is written
// for few of them: G is a build-time constant (no per-head branches), a paged block's size is a power of
// two (shift and mask, no division), and exp2 is the bare ex2.approx instruction.
//
// Build-time macros: HEAD_DIM (64, 128), G (query heads per KV head, 1-8), KV_INT8 (0, 1), MIN_BLOCKS
// (blocks per SM the registers must allow: cupy_ops.blocks_per_sm). The next step's rows load before this
// step's arithmetic; loading at the top of each step, 1 or 4 tokens a step, all ran slower (NOTES-gpu.md 12).
#if KV_INT8
typedef i8 kv_t;
typedef uint2 raw_t;
#else
typedef u16 kv_t;
typedef uint4 raw_t;
#endif
#define LG (HEAD_DIM / 8)
#define TPW (32 / LG)
#define NWARPS 4
#define NS (NWARPS * TPW)
#define UNROLL 2
#define STEP (NS * UNROLL)
// the running max of a stream that has seen no token yet: finite, so ex2(m - m_new) is 1 and never NaN
#define M_EMPTY -1e30f

__device__ __forceinline__ void row_floats(raw_t r, float out[8]) {
#if KV_INT8
    unpack8_i8(r, out);
#else
    unpack8(r, out);
#endif
}

__device__ __forceinline__ float ex2(float x) {  // 2^x; -inf gives 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Sum each of N values over the LG lanes of a token group, every lane getting all N sums. A transposed
// butterfly: at each level a lane sends half of the values it carries and keeps the other half, so the N
// partial sums cost about N + log2(LG) shuffles (not N * log2(LG)) before N gathers hand them out again.
template <int N>
__device__ __forceinline__ void group_sums(float (&v)[N], int lane) {
    if constexpr ((N & (N - 1)) != 0) {  // a group of 3, 5, 6 or 7 heads: the plain butterfly per value
#pragma unroll
        for (int o = LG / 2; o > 0; o >>= 1)
#pragma unroll
            for (int j = 0; j < N; j++) v[j] += __shfl_xor_sync(0xffffffffu, v[j], o);
        return;
    }
    const int r = lane % LG, base = lane - r;
    int n = N;  // values each lane carries
#pragma unroll
    for (int o = LG / 2; o > 0; o >>= 1) {
        if (n > 1) {
            const bool hi = r & o;
#pragma unroll
            for (int i = 0; i < n / 2; i++) {
                const float send = hi ? v[i] : v[i + n / 2], keep = hi ? v[i + n / 2] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
            n /= 2;
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
        }
    }
    // lane bit o (a halving level) set means it carries the upper half of that level: value j sits in
    // slot j % n of the lane whose halving bits spell j / n
    float all[N];
#pragma unroll
    for (int j = 0; j < N; j++) {
        int lane_j = 0, rest = j / n, half = N / 2;
#pragma unroll
        for (int o = LG / 2; o > 0 && half >= n; o >>= 1, half /= 2) {
            if (rest >= half / n) {
                lane_j |= o;
                rest -= half / n;
            }
        }
        all[j] = __shfl_sync(0xffffffffu, v[j % n], base + lane_j);
    }
#pragma unroll
    for (int j = 0; j < N; j++) v[j] = all[j];
}

// One step of one lane: UNROLL K and V rows (zero past the partition's end) and their dequant scales.
struct Step {
    raw_t k[UNROLL], v[UNROLL];
#if KV_INT8
    float ks[UNROLL], vs[UNROLL];
#endif
};

extern "C" __global__ void __launch_bounds__(NWARPS * 32, MIN_BLOCKS) decode_attention(
    const u16* __restrict__ q, const kv_t* __restrict__ k_pool, const kv_t* __restrict__ v_pool,
    const float* __restrict__ k_scale, const float* __restrict__ v_scale,
    i64 sx, i64 sh, i64 sy, i64 ssx, i64 ssh,
    const int* __restrict__ block_tables, int max_blocks, int block_shift, const int* __restrict__ seq_lens,
    int H, int Hkv, float scale_log2, int part_size,
    u16* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_lse)
{
    __shared__ float s_acc[NS][G][HEAD_DIM];
    __shared__ float s_m[NS][G], s_l[NS][G];

    const int kvh = blockIdx.x, b = blockIdx.y, part = blockIdx.z, num_parts = gridDim.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int stream = warp * TPW + lane / LG, d0 = (lane % LG) * 8;
    const int len = seq_lens[b];
    const int start = part * part_size, end = min(start + part_size, len);

    if (start >= len) {  // an empty partition (the grid covers the longest context the plan allows)
        if (num_parts == 1) {  // a sequence with no keys (seq_len 0): its output is zeros, not unwritten memory
            for (int i = threadIdx.x; i < G * HEAD_DIM; i += blockDim.x)
                out[((i64)b * H + kvh * G) * HEAD_DIM + i] = from_f(0.f);
        } else if (threadIdx.x < G) {
            part_lse[((i64)b * H + kvh * G + threadIdx.x) * num_parts + part] = -F_INF;
        }
        return;
    }

    float qf[G][8], acc[G][8], m[G], l[G];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = M_EMPTY;
        l[g] = 0.f;
        unpack8(*(const uint4*)(q + ((i64)b * H + kvh * G + g) * HEAD_DIM + d0), qf[g]);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            qf[g][j] *= scale_log2;
            acc[g][j] = 0.f;
        }
    }

    const int* table = block_tables + (i64)b * max_blocks;
    const int mask = (1 << block_shift) - 1;
    // strides and a head's offset fit in 32 bits (cupy_ops checks), so a row's offset is one 32x32->64 IMAD
    const int sx32 = (int)sx, sy32 = (int)sy, lane_off = kvh * (int)sh + d0;
#if KV_INT8
    const int ssx32 = (int)ssx, head_soff = kvh * (int)ssh;
#endif
    auto load = [&](Step& S, int t_warp) {
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int t = t_warp + lane / LG + u * NS;
            if (t < end) {
                const int blk = table[t >> block_shift], off = t & mask;
                const i64 o = (i64)blk * sx32 + (off * sy32 + lane_off);
                S.k[u] = *(const raw_t*)(k_pool + o);
                S.v[u] = *(const raw_t*)(v_pool + o);
#if KV_INT8
                const i64 so = (i64)blk * ssx32 + (head_soff + off);
                S.ks[u] = k_scale[so];
                S.vs[u] = v_scale[so];
#endif
            } else {  // past the end: a zero row that the softmax weighs 0
                S.k[u] = {};
                S.v[u] = {};
#if KV_INT8
                S.ks[u] = 0.f;
                S.vs[u] = 0.f;
#endif
            }
        }
    };

    // t_warp is the same for every lane of a warp, so all 32 lanes run the loop (and its shuffles) together
    int t_warp = start + warp * TPW;
    Step cur;
    if (t_warp < end) load(cur, t_warp);
    for (; t_warp < end; t_warp += STEP) {
        Step nxt;
        if (t_warp + STEP < end) load(nxt, t_warp + STEP);
        float s[UNROLL * G];  // this lane's share of the step's scores, token-major
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            float kf[8];
            row_floats(cur.k[u], kf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float a = 0.f, c = 0.f;  // two chains, half the FMA latency
#pragma unroll
                for (int j = 0; j < 8; j += 2) {
                    a += qf[g][j] * kf[j];
                    c += qf[g][j + 1] * kf[j + 1];
                }
                s[u * G + g] = a + c;
            }
        }
        group_sums<UNROLL * G>(s, lane);

        bool valid[UNROLL];  // every lane of a token group agrees, and its row is zero when not
        float vf[UNROLL][8];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) valid[u] = t_warp + lane / LG + u * NS < end;
#pragma unroll
        for (int u = 0; u < UNROLL; u++) row_floats(cur.v[u], vf[u]);
#pragma unroll
        for (int g = 0; g < G; g++) {
            float mx = m[g];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
#if KV_INT8
                s[u * G + g] *= cur.ks[u];
#endif
                s[u * G + g] = valid[u] ? s[u * G + g] : -F_INF;
                mx = fmaxf(mx, s[u * G + g]);
            }
            const float corr = ex2(m[g] - mx);
            float p[UNROLL], psum = 0.f;
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                p[u] = ex2(s[u * G + g] - mx);
                psum += p[u];
#if KV_INT8
                p[u] *= cur.vs[u];
#endif
            }
            l[g] = l[g] * corr + psum;
            m[g] = mx;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float a = acc[g][j] * corr;
#pragma unroll
                for (int u = 0; u < UNROLL; u++) a += p[u] * vf[u][j];
                acc[g][j] = a;
            }
        }
        cur = nxt;
    }

    // merge the NS token streams of this block
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
        for (int j = 0; j < 8; j++) s_acc[stream][g][d0 + j] = acc[g][j];
        if (lane % LG == 0) {
            s_m[stream][g] = m[g];
            s_l[stream][g] = l[g];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM, d = i % HEAD_DIM;
        float M = M_EMPTY;
#pragma unroll
        for (int s = 0; s < NS; s++) M = fmaxf(M, s_m[s][g]);
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int s = 0; s < NS; s++) {
            const float w = ex2(s_m[s][g] - M);
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
    out[head * HEAD_DIM + d] = from_f(W > 0.f ? A / W : 0.f);  // W == 0: every partition empty (seq_len 0)
}
