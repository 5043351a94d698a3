// Straightforward CUDA C segment reduce (forward only): the hand-written baseline the Triton
// kernel races against. One warp per segment; lane l reduces channels l, l+32, ... row by row,
// accumulating in fp32. reduce: 0 sum, 1 mean, 2 max (first max wins: strict >). Empty -> 0.
// Built at run time by csrc_bench/segment.py (CuPy/NVRTC); check with `nvcc -arch=sm_90 -ptx`.
#include "dtypes.cuh"

template <typename T>
__device__ __forceinline__ void segment_reduce_warp(const T* __restrict__ values, const long long* __restrict__ offsets,
                                                    T* __restrict__ out, long long n_segments, int channels,
                                                    int reduce) {
  const long long seg = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (seg >= n_segments) return;
  const int lane = threadIdx.x % 32;
  const long long start = offsets[seg], end = offsets[seg + 1];
  const float neg_inf = __int_as_float(0xff800000);
  for (int c = lane; c < channels; c += 32) {
    float acc = reduce == 2 ? neg_inf : 0.0f;
    for (long long row = start; row < end; ++row) {
      const float v = to_float(values[row * channels + c]);
      acc = reduce == 2 ? (v > acc ? v : acc) : acc + v;
    }
    if (end == start) {
      acc = 0.0f;
    } else if (reduce == 1) {
      acc /= (float)(end - start);
    }
    store(out + seg * channels + c, acc);
  }
}

#define DEFINE_SEGMENT_REDUCE(NAME, T)                                                                  \
  extern "C" __global__ void NAME(const T* values, const long long* offsets, T* out, long long n_segments, \
                                  int channels, int reduce) {                                           \
    segment_reduce_warp<T>(values, offsets, out, n_segments, channels, reduce);                        \
  }

DEFINE_SEGMENT_REDUCE(segment_reduce_f32, float)
DEFINE_SEGMENT_REDUCE(segment_reduce_f16, __half)
DEFINE_SEGMENT_REDUCE(segment_reduce_bf16, __nv_bfloat16)
