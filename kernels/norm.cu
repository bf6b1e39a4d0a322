// Fused residual add + RMSNorm, one block per row:
//   x += delta (rounded to the scalar type, as a separate add would store it)   [skipped if delta is null]
//   out = round(round(x * rsqrt(mean(x^2) + eps)) * w)
// Twin: tuner.backends.torch_ops.add_rms_norm. Rows of n scalars, n % 8 == 0, n <= 8 * 8 * blockDim.x.
#define MAXC 8

extern "C" __global__ void __launch_bounds__(256) add_rms_norm(
    u16* __restrict__ x, const u16* __restrict__ delta, const u16* __restrict__ w, u16* __restrict__ out,
    int n, float eps)
{
    __shared__ float scratch[32];
    const i64 row = blockIdx.x;
    u16* xr = x + row * n;
    const u16* dr = delta ? delta + row * n : 0;
    float v[MAXC][8];
    uint4 wr[MAXC];  // the weights are loaded with x, so the second half waits on no memory round trip
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        int i = (c * blockDim.x + threadIdx.x) * 8;
        if (i < n) {
            wr[c] = *(const uint4*)(w + i);
            unpack8(*(const uint4*)(xr + i), v[c]);
            if (dr) {
                float d[8];
                unpack8(*(const uint4*)(dr + i), d);
#pragma unroll
                for (int j = 0; j < 8; j++) v[c][j] = round_s(v[c][j] + d[j]);
                *(uint4*)(xr + i) = pack8(v[c]);
            }
#pragma unroll
            for (int j = 0; j < 8; j++) ss += v[c][j] * v[c][j];
        }
    }
    const float rstd = rsqrtf(block_sum(ss, scratch) / n + eps);
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        int i = (c * blockDim.x + threadIdx.x) * 8;
        if (i < n) {
            float wv[8], o[8];
            unpack8(wr[c], wv);
#pragma unroll
            for (int j = 0; j < 8; j++) o[j] = round_s(v[c][j] * rstd) * wv[j];
            *(uint4*)(out + row * n + i) = pack8(o);
        }
    }
}

// out = round(round(silu(gate)) * up) for rows of x = [gate | up], each half n scalars (n % 8 == 0).
// grid (ceil(n / 2048), rows), 256 threads. Twin: tuner.backends.torch_ops.silu_and_mul.
extern "C" __global__ void __launch_bounds__(256) silu_and_mul(const u16* __restrict__ x, u16* __restrict__ out,
                                                              int n) {
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const i64 row = blockIdx.y;
    float g[8], u[8], o[8];
    unpack8(*(const uint4*)(x + row * 2 * n + i), g);
    unpack8(*(const uint4*)(x + row * 2 * n + n + i), u);
#pragma unroll
    for (int j = 0; j < 8; j++) o[j] = round_s(g[j] / (1.f + expf(-g[j]))) * u[j];
    *(uint4*)(out + row * n + i) = pack8(o);
}
