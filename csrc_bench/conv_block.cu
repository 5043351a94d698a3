// Straightforward CUDA C fused TCN block forward (relu mode): the hand-written baseline the Triton
// kernel races against.
//   y[t, o] = relu(x[t, o] + relu(bias[o] + sum_k sum_c wt[k, c, o] * x[t - (K-1-k)*dilation, c]))
// where rows before the start of t's own sequence (cu_seqlens) read as zero.
// A textbook shared-memory tiled GEMM on CUDA cores (no tensor cores), fp32 accumulation: each block
// owns 64 rows x 64 output channels, each of its 256 threads a 4x4 patch; the K taps and 16-channel
// input chunks stream through shared memory. The weight arrives as (K, C_in, C_out) so its tile
// loads are coalesced. Built at run time by csrc_bench/conv.py (CuPy/NVRTC); check with
// `nvcc -arch=sm_90 -ptx`.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define BLOCK_ROWS 64
#define BLOCK_OUT 64
#define BLOCK_IN 16
#define PATCH 4
#define THREADS ((BLOCK_ROWS / PATCH) * (BLOCK_OUT / PATCH))

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

template <typename T>
__device__ __forceinline__ void tcn_block_relu_tile(const T* __restrict__ x, const long long* __restrict__ cu_seqlens,
                                                    const T* __restrict__ wt, const T* __restrict__ bias,
                                                    T* __restrict__ y, long long n_seqs, long long n_rows,
                                                    int channels, int taps, int dilation) {
  __shared__ float xs[BLOCK_IN][BLOCK_ROWS + 4];  // +4: fewer bank conflicts on the transposed store
  __shared__ float ws[BLOCK_IN][BLOCK_OUT];
  __shared__ long long seq_start[BLOCK_ROWS];
  const long long row0 = (long long)blockIdx.x * BLOCK_ROWS;
  const int out0 = blockIdx.y * BLOCK_OUT;
  const int tid = threadIdx.x;

  // Start of each row's sequence: the last cu_seqlens entry <= row (binary search keeps
  // cu_seqlens[lo] <= row < cu_seqlens[hi], so empty sequences are skipped).
  if (tid < BLOCK_ROWS) {
    const long long row = row0 + tid;
    long long lo = 0, hi = n_seqs;
    if (row < n_rows) {
      while (hi - lo > 1) {
        const long long mid = (lo + hi) / 2;
        if (cu_seqlens[mid] <= row) lo = mid; else hi = mid;
      }
    }
    seq_start[tid] = row < n_rows ? cu_seqlens[lo] : row;
  }
  __syncthreads();

  const int tx = tid % (BLOCK_OUT / PATCH), ty = tid / (BLOCK_OUT / PATCH);
  float acc[PATCH][PATCH] = {};
  for (int k = 0; k < taps; ++k) {
    const long long shift = (long long)(taps - 1 - k) * dilation;
    for (int c0 = 0; c0 < channels; c0 += BLOCK_IN) {
      for (int e = tid; e < BLOCK_ROWS * BLOCK_IN; e += THREADS) {
        const int r = e / BLOCK_IN, c = e % BLOCK_IN;
        const long long src = row0 + r - shift;
        const bool inside = row0 + r < n_rows && src >= seq_start[r] && c0 + c < channels;
        xs[c][r] = inside ? to_float(x[src * channels + c0 + c]) : 0.0f;
      }
      for (int e = tid; e < BLOCK_IN * BLOCK_OUT; e += THREADS) {
        const int c = e / BLOCK_OUT, o = e % BLOCK_OUT;
        const bool inside = c0 + c < channels && out0 + o < channels;
        ws[c][o] = inside ? to_float(wt[((long long)k * channels + c0 + c) * channels + out0 + o]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < BLOCK_IN; ++c) {
        float a[PATCH], b[PATCH];
#pragma unroll
        for (int i = 0; i < PATCH; ++i) a[i] = xs[c][ty * PATCH + i];
#pragma unroll
        for (int j = 0; j < PATCH; ++j) b[j] = ws[c][tx * PATCH + j];
#pragma unroll
        for (int i = 0; i < PATCH; ++i)
#pragma unroll
          for (int j = 0; j < PATCH; ++j) acc[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }
  }

#pragma unroll
  for (int i = 0; i < PATCH; ++i) {
    const long long row = row0 + ty * PATCH + i;
    if (row >= n_rows) continue;
#pragma unroll
    for (int j = 0; j < PATCH; ++j) {
      const int o = out0 + tx * PATCH + j;
      if (o >= channels) continue;
      const float a = acc[i][j] + (bias != nullptr ? to_float(bias[o]) : 0.0f);
      const float v = to_float(x[row * channels + o]) + fmaxf(a, 0.0f);
      store(y + row * channels + o, fmaxf(v, 0.0f));
    }
  }
}

#define DEFINE_TCN_BLOCK_RELU(NAME, T)                                                                        \
  extern "C" __global__ void __launch_bounds__(THREADS)                                                       \
      NAME(const T* x, const long long* cu_seqlens, const T* wt, const T* bias, T* y, long long n_seqs,        \
           long long n_rows, int channels, int taps, int dilation) {                                          \
    tcn_block_relu_tile<T>(x, cu_seqlens, wt, bias, y, n_seqs, n_rows, channels, taps, dilation);             \
  }

DEFINE_TCN_BLOCK_RELU(tcn_block_relu_f32, float)
DEFINE_TCN_BLOCK_RELU(tcn_block_relu_f16, __half)
DEFINE_TCN_BLOCK_RELU(tcn_block_relu_bf16, __nv_bfloat16)
