// Shared helpers for tuner's decode kernels. No CUDA headers are needed: 16-bit floats travel as
// unsigned short and are converted with PTX (sm_80+), so NVRTC compiles these sources anywhere.
//
// Build-time macros (set by tuner/backends/cupy_ops.py):
//   SCALAR_BF16  1: activations and weights are bfloat16; 0: float16
typedef unsigned short u16;
typedef unsigned char u8;
typedef signed char i8;
typedef long long i64;
typedef unsigned long long u64;
#define F_INF __int_as_float(0x7f800000)

#ifndef SCALAR_BF16
#define SCALAR_BF16 1
#endif

__device__ __forceinline__ float to_f(u16 x) {
#if SCALAR_BF16
    return __uint_as_float(((unsigned)x) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#endif
}

__device__ __forceinline__ u16 from_f(float f) {
    u16 r;
#if SCALAR_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
#endif
    return r;
}

// Round a float to the scalar type and back: what storing it and reading it again gives.
__device__ __forceinline__ float round_s(float f) { return to_f(from_f(f)); }

// 8 scalars <-> 16 bytes.
__device__ __forceinline__ void unpack8(uint4 v, float out[8]) {
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = to_f((u16)(w[i] & 0xffffu));
        out[2 * i + 1] = to_f((u16)(w[i] >> 16));
    }
}

__device__ __forceinline__ uint4 pack8(const float in[8]) {
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = (unsigned)from_f(in[2 * i]) | ((unsigned)from_f(in[2 * i + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// 8 signed bytes (8 bytes) -> floats.
__device__ __forceinline__ void unpack8_i8(uint2 v, float out[8]) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[i] = (float)(i8)((v.x >> (8 * i)) & 0xffu);
        out[4 + i] = (float)(i8)((v.y >> (8 * i)) & 0xffu);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch /* 32 floats */) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch /* 32 floats */) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : -F_INF;
    return warp_max(v);
}
