// Weight-only quantized matrix products for decode batches of up to MMAX rows, dequantizing in registers:
//   out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n])
// int8: W[n, k] = q[n, k] * scale[n]               q int8 [N, K], scale [N]
// int4: W[n, k] = (q[n, k] - 8) * scale[n, k/g] + zero[n, k/g]
//       q packed two per byte [N, K/2] (low nibble = even k), scale and zero [N, K/g], g >= 32
//       (computed as scale * sum(x * (q - 8)) + zero * sum(x) per group)
// 256 threads, a warp per ROWS output features; each lane streams 16 bytes of weights per step (16 int8 or
// 32 int4 values) with non-allocating loads, so x stays in L1. Twins: torch_ops.int8_linear / int4_linear.
//
// Build-time macros: MMAX (rows of x served, <= 8).
#define ROWS 2
#define WARPS 8
#define UNR 4

// Integer -> float without I2F (a quarter-rate instruction that would bound the int4 kernel): put the
// value in the mantissa of 2^23 and subtract. Byte j of w as a signed int8; nibble j of w minus 8.
__device__ __forceinline__ float i8_to_f(unsigned w, int j) {
    return __int_as_float(0x4B000000u | (((w >> (8 * j)) & 0xffu) ^ 0x80u)) - 8388736.f;  // 2^23 + 128
}

__device__ __forceinline__ float u4_to_f(unsigned w, int j) {
    return __int_as_float(0x4B000000u | ((w >> (4 * j)) & 0xfu)) - 8388616.f;  // 2^23 + 8
}

__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

__device__ __forceinline__ void finish(float acc[ROWS][MMAX], int n0, int N, int M, const u16* __restrict__ bias,
                                       const float rowscale[ROWS], u16* __restrict__ out) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
#pragma unroll
        for (int m = 0; m < MMAX; m++) {
            float v = warp_sum(acc[r][m]);
            if (lane == r * MMAX + m && m < M && n0 + r < N) {
                v *= rowscale[r];
                if (bias) v += to_f(bias[n0 + r]);
                out[(i64)m * N + n0 + r] = from_f(v);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 1) int8_gemm(
    const u16* __restrict__ x, const i8* __restrict__ q, const u16* __restrict__ scale, const u16* __restrict__ bias,
    u16* __restrict__ out, int M, int N, int K)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = (blockIdx.x * WARPS + warp) * ROWS;
    if (n0 >= N) return;
    float acc[ROWS][MMAX];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int m = 0; m < MMAX; m++) acc[r][m] = 0.f;
    for (int kb = lane * 16; kb < K; kb += 32 * 16 * UNR) {
        uint4 w[UNR][ROWS];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int k = kb + u * 32 * 16;
#pragma unroll
            for (int r = 0; r < ROWS; r++)
                if (k < K && n0 + r < N) w[u][r] = ld_stream(q + (i64)(n0 + r) * K + k);
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int k = kb + u * 32 * 16;
            if (k >= K) break;
#pragma unroll
            for (int m = 0; m < MMAX; m++) {
                if (m < M) {
                    float xa[8], xb[8];
                    unpack8(*(const uint4*)(x + (i64)m * K + k), xa);
                    unpack8(*(const uint4*)(x + (i64)m * K + k + 8), xb);
#pragma unroll
                    for (int r = 0; r < ROWS; r++) {
                        const unsigned ww[4] = {w[u][r].x, w[u][r].y, w[u][r].z, w[u][r].w};
                        float s = 0.f;
#pragma unroll
                        for (int j = 0; j < 8; j++) s += xa[j] * i8_to_f(ww[j / 4], j % 4);
#pragma unroll
                        for (int j = 0; j < 8; j++) s += xb[j] * i8_to_f(ww[2 + j / 4], j % 4);
                        acc[r][m] += s;
                    }
                }
            }
        }
    }
    float rowscale[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) rowscale[r] = n0 + r < N ? to_f(scale[n0 + r]) : 0.f;
    finish(acc, n0, N, M, bias, rowscale, out);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 1) int4_gemm(
    const u16* __restrict__ x, const u8* __restrict__ q, const u16* __restrict__ scale, const u16* __restrict__ zero,
    const u16* __restrict__ bias, u16* __restrict__ out, int M, int N, int K, int group_size)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = (blockIdx.x * WARPS + warp) * ROWS;
    if (n0 >= N) return;
    const int ng = K / group_size;
    float acc[ROWS][MMAX];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int m = 0; m < MMAX; m++) acc[r][m] = 0.f;
    for (int kb = lane * 32; kb < K; kb += 32 * 32 * UNR) {
        uint4 w[UNR][ROWS];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int k = kb + u * 32 * 32;
#pragma unroll
            for (int r = 0; r < ROWS; r++)
                if (k < K && n0 + r < N) w[u][r] = ld_stream(q + ((i64)(n0 + r) * K + k) / 2);
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int k = kb + u * 32 * 32;
            if (k >= K) break;
            float s_[ROWS], z_[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const i64 gi = (i64)(n0 + r < N ? n0 + r : n0) * ng + k / group_size;
                s_[r] = to_f(scale[gi]);
                z_[r] = to_f(zero[gi]);
            }
#pragma unroll
            for (int m = 0; m < MMAX; m++) {
                if (m < M) {
                    float dot[ROWS], xs = 0.f;
#pragma unroll
                    for (int r = 0; r < ROWS; r++) dot[r] = 0.f;
#pragma unroll
                    for (int c = 0; c < 4; c++) {  // 4 x 8 values of x; weight word c holds their 8 nibbles
                        float xv[8];
                        unpack8(*(const uint4*)(x + (i64)m * K + k + 8 * c), xv);
#pragma unroll
                        for (int j = 0; j < 8; j++) xs += xv[j];
#pragma unroll
                        for (int r = 0; r < ROWS; r++) {
                            const unsigned ww = c == 0 ? w[u][r].x : c == 1 ? w[u][r].y : c == 2 ? w[u][r].z : w[u][r].w;
#pragma unroll
                            for (int j = 0; j < 8; j++) dot[r] += xv[j] * u4_to_f(ww, j);
                        }
                    }
#pragma unroll
                    for (int r = 0; r < ROWS; r++) acc[r][m] += s_[r] * dot[r] + z_[r] * xs;
                }
            }
        }
    }
    const float ones[ROWS] = {1.f, 1.f};
    finish(acc, n0, N, M, bias, ones, out);
}

// int4 at one row of x (batch-1 decode): integer dot products. quantize_x_q8 first rounds x to int8 per 32
// values (scale = max|x| / 127), laid out to meet the nibbles: in each 8 values the even k go to one word, the
// odd k to the next. Then per 32 weights a lane needs 4 LOP/SHF pairs and 8 dp4a instead of 32 conversions
// and FMAs:
//   sum_k x_k (q_k - 8) ~= xscale * (sum_k xq_k q_k - 8 sum_k xq_k);  out += scale * that + zero * sum_k x_k
// Twin: torch_ops.int4_linear (x is rounded to int8 here: relative error ~1e-3).

__device__ __forceinline__ int dp4a(unsigned a, unsigned b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// grid ceil(K / 256), 256 threads: one warp per 32 values of x.
extern "C" __global__ void __launch_bounds__(256) quantize_x_q8(
    const u16* __restrict__ x, unsigned* __restrict__ xq, float* __restrict__ xscale, float* __restrict__ xsum,
    int* __restrict__ xqsum, int K)
{
    const int lane = threadIdx.x & 31;
    const int c = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (c >= K / 32) return;
    const float v = to_f(x[c * 32 + lane]);
    const float amax = warp_max(fabsf(v));
    const float xs = amax > 0.f ? amax / 127.f : 1.f;
    const int q = (int)rintf(v / xs);
    const int b = lane & 7, word = 2 * (lane >> 3) + (b & 1);
    ((i8*)xq)[c * 32 + word * 4 + (b >> 1)] = (i8)q;
    const float sum = warp_sum(v), qsum = warp_sum((float)q);
    if (lane == 0) {
        xscale[c] = xs;
        xsum[c] = sum;
        xqsum[c] = (int)qsum;
    }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 1) int4_gemv_q8(
    const unsigned* __restrict__ xq, const float* __restrict__ xscale, const float* __restrict__ xsum_,
    const int* __restrict__ xqsum_, const u8* __restrict__ q, const u16* __restrict__ scale,
    const u16* __restrict__ zero, const u16* __restrict__ bias, u16* __restrict__ out, int N, int K, int group_size)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = (blockIdx.x * WARPS + warp) * ROWS;
    if (n0 >= N) return;
    const int ng = K / group_size;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[r] = 0.f;
    for (int kb = lane * 32; kb < K; kb += 32 * 32 * UNR) {
        uint4 w[UNR][ROWS];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int k = kb + u * 32 * 32;
#pragma unroll
            for (int r = 0; r < ROWS; r++)
                if (k < K && n0 + r < N) w[u][r] = ld_stream(q + ((i64)(n0 + r) * K + k) / 2);
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            const int k = kb + u * 32 * 32;
            if (k >= K) break;
            const int c = k / 32;
            const uint4 xa = *(const uint4*)(xq + c * 8), xb = *(const uint4*)(xq + c * 8 + 4);
            const float xs = xscale[c], xsum = xsum_[c];
            const int xqsum = xqsum_[c];
            const unsigned xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const i64 gi = (i64)(n0 + r < N ? n0 + r : n0) * ng + k / group_size;
                const unsigned ww[4] = {w[u][r].x, w[u][r].y, w[u][r].z, w[u][r].w};
                int dot = 0;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    dot = dp4a(ww[j] & 0x0F0F0F0Fu, xw[2 * j], dot);
                    dot = dp4a((ww[j] >> 4) & 0x0F0F0F0Fu, xw[2 * j + 1], dot);
                }
                acc[r] += to_f(scale[gi]) * xs * (float)(dot - 8 * xqsum) + to_f(zero[gi]) * xsum;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const float v = warp_sum(acc[r]);
        if (lane == 0 && n0 + r < N) out[n0 + r] = from_f(bias ? v + to_f(bias[n0 + r]) : v);
    }
}
