// Helpers shared by the CUDA kernels: launch sizes, warp/block reductions, device checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace gdig {
namespace cuda {

// Tiles on the GPU may be larger than on the CPU (fewer launches, bigger GEMMs) but stay
// far below a card's memory so a model can live beside them: 2^25 values = 128 MiB fp32.
constexpr int64_t kTileElems = int64_t(1) << 25;
constexpr int kThreads = 256;  // every kernel here uses this block size
constexpr int kWarp = 32;

// Blocks for a grid-stride loop over n items: enough to fill the card, never zero.
inline unsigned int blocks_for(int64_t n) {
  const int64_t want = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(want, 65535)));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over a block of kThreads threads; the result is valid in thread 0 only.
// Call at most once per kernel (the shared scratch is not re-synchronised for reuse).
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[kThreads / kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / kWarp ? partial[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// The dispatcher sends an op here when any input is on CUDA; the rest must follow it.
inline void check_cuda(const char* op, const at::Tensor& ref, const char* ref_name,
                       const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but ", ref_name, " is on ", ref.device(),
              "; the CUDA kernel needs them on one CUDA device");
}

}  // namespace cuda
}  // namespace gdig
