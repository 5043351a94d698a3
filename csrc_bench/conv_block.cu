// Straightforward CUDA C TCN block forward: the hand-written baseline the Triton kernel races against.
//   relu:  y[t, o] = relu(x[t, o] + relu(conv(x)[t, o]))                  (one launch, fused)
//   gated: h[t, j] = tanh(conv(x)[t, j]) * sigmoid(conv(x)[t, H + j])     (launch 1)
//          y[t, o] = x[t, o] + out_bias[o] + sum_j out_weight[o, j] * h[t, j]   (launch 2: a 1x1 "conv")
// conv(x)[t, o] = bias[o] + sum_k sum_c wt[k, c, o] * x[t - (K-1-k)*dilation, c], where rows before
// the start of t's own sequence (cu_seqlens) read as zero.
// A textbook shared-memory tiled GEMM on CUDA cores (no tensor cores), fp32 accumulation: each block
// owns 64 rows x 64 output columns, each of its 256 threads a 4x4 patch (two of them for the gate's
// tanh and sigmoid halves); the K taps and 16-channel input chunks stream through shared memory.
// Weights arrive as (K, C_in, width) so their tile loads are coalesced. Built at run time by
// csrc_bench/conv.py (CuPy/NVRTC); check with `nvcc -arch=sm_90 -ptx`.
#include "dtypes.cuh"

#define BLOCK_ROWS 64
#define BLOCK_OUT 64
#define BLOCK_IN 16
#define PATCH 4
#define THREADS ((BLOCK_ROWS / PATCH) * (BLOCK_OUT / PATCH))

// Epilogues: what a tile does with its accumulators.
#define RELU_BLOCK 0   // out = relu(residual + relu(acc + bias)); width = C_out = C_in
#define GATE 1         // out = tanh(acc + bias) * sigmoid(acc_gate + bias[C_out + o]); width = 2 C_out
#define PROJECT_ADD 2  // out = residual + acc + bias; width = C_out

template <typename T, int EPILOGUE>
__device__ __forceinline__ void conv_tile(const T* __restrict__ in, const long long* __restrict__ cu_seqlens,
                                          const T* __restrict__ wt, const T* __restrict__ bias,
                                          const T* __restrict__ residual, T* __restrict__ out, long long n_seqs,
                                          long long n_rows, int c_in, int c_out, int taps, int dilation) {
  constexpr int HALVES = EPILOGUE == GATE ? 2 : 1;
  __shared__ float xs[BLOCK_IN][BLOCK_ROWS + 4];  // +4: fewer bank conflicts on the transposed store
  __shared__ float ws[HALVES][BLOCK_IN][BLOCK_OUT];
  __shared__ long long seq_start[BLOCK_ROWS];
  const long long row0 = (long long)blockIdx.x * BLOCK_ROWS;
  const int out0 = blockIdx.y * BLOCK_OUT;
  const int width = HALVES * c_out;  // row length of wt
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
  float acc[HALVES][PATCH][PATCH] = {};
  for (int k = 0; k < taps; ++k) {
    const long long shift = (long long)(taps - 1 - k) * dilation;
    for (int c0 = 0; c0 < c_in; c0 += BLOCK_IN) {
      for (int e = tid; e < BLOCK_ROWS * BLOCK_IN; e += THREADS) {
        const int r = e / BLOCK_IN, c = e % BLOCK_IN;
        const long long src = row0 + r - shift;
        const bool inside = row0 + r < n_rows && src >= seq_start[r] && c0 + c < c_in;
        xs[c][r] = inside ? to_float(in[src * c_in + c0 + c]) : 0.0f;
      }
      for (int e = tid; e < HALVES * BLOCK_IN * BLOCK_OUT; e += THREADS) {
        const int half = e / (BLOCK_IN * BLOCK_OUT), c = e / BLOCK_OUT % BLOCK_IN, o = e % BLOCK_OUT;
        const bool inside = c0 + c < c_in && out0 + o < c_out;
        const long long at = ((long long)k * c_in + c0 + c) * width + half * c_out + out0 + o;
        ws[half][c][o] = inside ? to_float(wt[at]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < BLOCK_IN; ++c) {
        float a[PATCH];
#pragma unroll
        for (int i = 0; i < PATCH; ++i) a[i] = xs[c][ty * PATCH + i];
#pragma unroll
        for (int half = 0; half < HALVES; ++half) {
          float b[PATCH];
#pragma unroll
          for (int j = 0; j < PATCH; ++j) b[j] = ws[half][c][tx * PATCH + j];
#pragma unroll
          for (int i = 0; i < PATCH; ++i)
#pragma unroll
            for (int j = 0; j < PATCH; ++j) acc[half][i][j] += a[i] * b[j];
        }
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
      if (o >= c_out) continue;
      const float a = acc[0][i][j] + (bias != nullptr ? to_float(bias[o]) : 0.0f);
      float v;
      if constexpr (EPILOGUE == RELU_BLOCK) {
        v = fmaxf(to_float(residual[row * c_out + o]) + fmaxf(a, 0.0f), 0.0f);
      } else if constexpr (EPILOGUE == GATE) {
        const float g = acc[HALVES - 1][i][j] + (bias != nullptr ? to_float(bias[c_out + o]) : 0.0f);
        v = tanhf(a) / (1.0f + expf(-g));
      } else {
        v = to_float(residual[row * c_out + o]) + a;
      }
      store(out + row * c_out + o, v);
    }
  }
}

// Two blocks per SM: caps registers at 128, where ptxas' own choice (64) spilled.
#define DEFINE_CONV_TILE(NAME, T, EPILOGUE)                                                                   \
  extern "C" __global__ void __launch_bounds__(THREADS, 2)                                                    \
      NAME(const T* in, const long long* cu_seqlens, const T* wt, const T* bias, const T* residual, T* out,     \
           long long n_seqs, long long n_rows, int c_in, int c_out, int taps, int dilation) {                 \
    conv_tile<T, EPILOGUE>(in, cu_seqlens, wt, bias, residual, out, n_seqs, n_rows, c_in, c_out, taps,         \
                           dilation);                                                                         \
  }

#define DEFINE_FOR_DTYPES(NAME, EPILOGUE)                 \
  DEFINE_CONV_TILE(NAME##_f32, float, EPILOGUE)           \
  DEFINE_CONV_TILE(NAME##_f16, __half, EPILOGUE)          \
  DEFINE_CONV_TILE(NAME##_bf16, __nv_bfloat16, EPILOGUE)

DEFINE_FOR_DTYPES(tcn_block_relu, RELU_BLOCK)
DEFINE_FOR_DTYPES(tcn_block_gate, GATE)
DEFINE_FOR_DTYPES(tcn_block_project_add, PROJECT_ADD)
