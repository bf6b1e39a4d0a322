// Fused sampling, one block of 1024 threads per row of float32 logits [B, V]; no sort.
//   keep = top-k (k-th largest logit by radix select on the float bits)
//        & top-p (largest logit v whose kept mass at or above v reaches top_p: radix select on mass)
//        & min-p (p / p_max >= min_p)
//   token = argmax over kept of (l - max)/T + Gumbel noise   (the exponential race: a draw from the
//           renormalized distribution; ties go to the lowest id)
// Masses are fixed point (2^24 units per unit of exp((l - max)/T)), so their sums do not depend on order.
// The noise comes from splitmix64 of (seed, offset, row, token id); rng = {seed, offset, blocks done} lives in
// device memory and the last block to finish advances offset, so the kernel can replay inside a CUDA graph.
// Twin: tuner.backends.torch_ops.sample_fused.
typedef unsigned int u32;
#define NT 1024
#define MASS_ONE 16777216.f

__device__ __forceinline__ u32 fkey(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Elements i .. i+3 of a row (16-byte load when the row allows it); ok[j] false past the end.
__device__ __forceinline__ void load4(const float* __restrict__ l, int i, int V, float x[4], bool ok[4]) {
    if ((V & 3) == 0 && i + 3 < V) {
        const float4 v = *(const float4*)(l + i);
        x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w;
#pragma unroll
        for (int j = 0; j < 4; j++) ok[j] = true;
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            ok[j] = i + j < V;
            x[j] = ok[j] ? l[i + j] : 0.f;
        }
    }
}

__device__ __forceinline__ u64 splitmix64(u64 x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Warp 0 finds, scanning bins from 255 down, the first where above + (count of higher bins) + bin >= want.
// Results: s_sel[0] = bin (or -1), s_above[0] = above + count of the bins higher than it. With frac >= 0
// (the first pass of a top-p select) want is ceil(frac * total of all bins), returned in s_want[0].
__device__ void select_bin(const u64* hist, u64 want, float frac, u64 above, int* s_sel, u64* s_above,
                           u64* s_want) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    u64 mine = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) mine += hist[255 - 8 * lane - j];
    u64 incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u64 v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (frac >= 0.f) {  // incl of lane 31 is the total of every bin
        const u64 total = __shfl_sync(0xffffffffu, incl, 31);
        want = (u64)ceil((double)frac * (double)total);
        want = want > 0 ? want : 1;
        if (lane == 0) s_want[0] = want;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, above + incl >= want);
    if (hit == 0) {
        if (lane == 0) s_sel[0] = -1;
        return;
    }
    const int f = __ffs(hit) - 1;
    if (lane == f) {
        u64 c = above + incl - mine;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const u64 h = hist[255 - 8 * lane - j];
            if (c + h >= want) {
                s_sel[0] = 255 - 8 * lane - j;
                s_above[0] = c;
                break;
            }
            c += h;
        }
    }
}

// Radix select over the keys of the kept logits: the largest key kk with weight(keys >= kk) >= want, where
// weight is 1 per token (by_mass false) or its fixed-point mass. Returns 0 if the kept weight is under want.
__device__ u32 radix_select(const float* __restrict__ l, int V, float M, float inv_t, u32 floor_key, bool by_mass,
                            u64 want, float frac, u64* hist, int* s_sel, u64* s_above) {
    u32 prefix = 0, pmask = 0;
    u64 above = 0;
    const int lane = threadIdx.x & 31;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += NT) hist[i] = 0;
        __syncthreads();
        for (int base = 0; base < V; base += 4 * NT) {  // uniform trip count: every lane reaches the syncs
            float xv[4];
            bool ok[4];
            load4(l, base + 4 * threadIdx.x, V, xv, ok);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int bin = -1;
                u32 w = 0;
                const u32 k = fkey(xv[j]);
                if (ok[j] && k >= floor_key && (k & pmask) == prefix) {
                    bin = (k >> shift) & 255;
                    w = by_mass ? (u32)(expf((xv[j] - M) * inv_t) * MASS_ONE) : 1u;
                }
                if (__any_sync(0xffffffffu, bin >= 0)) {  // later passes: most warps hold no candidate
                    const unsigned peers = __match_any_sync(0xffffffffu, bin);  // lanes of one bin add once
                    const u32 sum = __reduce_add_sync(peers, w);
                    if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (u64)sum);
                }
            }
        }
        __syncthreads();
        __shared__ u64 s_want[1];
        select_bin(hist, want, shift == 24 ? frac : -1.f, above, s_sel, s_above, s_want);
        __syncthreads();
        if (shift == 24 && frac >= 0.f) want = s_want[0];
        const int sel = s_sel[0];
        if (sel < 0) return 0u;
        above = s_above[0];
        prefix |= (u32)sel << shift;
        pmask |= 255u << shift;
        __syncthreads();
    }
    return prefix;
}

// Block-wide argmax of (best, best_i) pairs, ties to the lower id; the result lands in thread 0.
__device__ __forceinline__ void warp_argmax(float& best, int& best_i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (ob > best || (ob == best && oi < best_i)) {
            best = ob;
            best_i = oi;
        }
    }
}

__device__ __forceinline__ void block_argmax(float& best, int& best_i) {
    __shared__ float s_best[32];
    __shared__ int s_idx[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    warp_argmax(best, best_i);
    if (lane == 0) {
        s_best[warp] = best;
        s_idx[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
        best = s_best[lane];
        best_i = s_idx[lane];
        warp_argmax(best, best_i);
    }
}

extern "C" __global__ void __launch_bounds__(NT, 1) sample_tokens(
    const float* __restrict__ logits, int V, float temperature, int top_k, float top_p, float min_p,
    u64* __restrict__ rng, i64* __restrict__ out)
{
    __shared__ float scratch[32];
    __shared__ u64 hist[256];
    __shared__ int s_sel[1];
    __shared__ u64 s_above[1];
    const int row = blockIdx.x;
    const float* l = logits + (i64)row * V;
    const u64 seed = rng[0], offset = rng[1];
    const float inv_t = 1.f / temperature;

    float mx = -F_INF;
    for (int i = 4 * threadIdx.x; i < V; i += 4 * NT) {
        float xv[4];
        bool ok[4];
        load4(l, i, V, xv, ok);
#pragma unroll
        for (int j = 0; j < 4; j++) if (ok[j]) mx = fmaxf(mx, xv[j]);
    }
    const float M = block_max(mx, scratch);

    u32 floor_key = 0;  // keep tokens whose key is >= floor_key
    if (top_k > 0 && top_k < V)
        floor_key = radix_select(l, V, M, inv_t, 0u, false, (u64)top_k, -1.f, hist, s_sel, s_above);
    if (top_p < 1.f) {  // want = ceil(top_p * total kept mass), found from the first histogram
        const u32 kp = radix_select(l, V, M, inv_t, floor_key, true, 0, top_p, hist, s_sel, s_above);
        if (kp > floor_key) floor_key = kp;
    }

    const u64 row_key = splitmix64(splitmix64(seed ^ splitmix64(offset)) + (u64)row);
    float best = -F_INF;
    int best_i = 0x7fffffff;
    for (int i0 = 4 * threadIdx.x; i0 < V; i0 += 4 * NT) {
        float xv[4];
        bool ok[4];
        load4(l, i0, V, xv, ok);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int i = i0 + j;
            const float z = (xv[j] - M) * inv_t;
            if (!ok[j] || fkey(xv[j]) < floor_key || (min_p > 0.f && expf(z) < min_p)) continue;
            const u64 r = splitmix64(row_key + (u64)i);
            const float u = ((float)(r >> 40) + 0.5f) * (1.f / 16777216.f);
            const float s = z - logf(-logf(u));
            if (s > best) {  // i rises within a thread, so equal scores keep the lower id
                best = s;
                best_i = i;
            }
        }
    }
    block_argmax(best, best_i);
    if (threadIdx.x == 0) {
        out[row] = best_i;
        __threadfence();
        const u64 done = atomicAdd(&rng[2], 1ull);
        if (done == gridDim.x - 1) {  // the last block: every block has read offset
            rng[1] = offset + 1;
            rng[2] = 0;
        }
    }
}

// Greedy: the lowest id of the largest logit of each row (torch.argmax's rule).
extern "C" __global__ void __launch_bounds__(NT, 1) argmax_rows(const float* __restrict__ logits, int V,
                                                          i64* __restrict__ out) {
    const float* l = logits + (i64)blockIdx.x * V;
    float best = -F_INF;
    int best_i = 0x7fffffff;
    for (int i0 = 4 * threadIdx.x; i0 < V; i0 += 4 * NT) {
        float xv[4];
        bool ok[4];
        load4(l, i0, V, xv, ok);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (ok[j] && (xv[j] > best || best_i == 0x7fffffff)) {
                best = xv[j];
                best_i = i0 + j;
            }
        }
    }
    block_argmax(best, best_i);
    if (threadIdx.x == 0) out[blockIdx.x] = best_i;
}
