// Helpers shared by the CUDA kernels: tile budgets, launch sizes, warp/block reductions,
// device checks, and the fp32 precision every op runs its GEMMs at.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace gdig {
namespace cuda {

// Values of a tile that an op writes and reads straight back (ekfac_accumulate's rotated
// gradients, lowrank_benefit's two projections together, score_stats' scores): 2^22 values
// = 16 MiB in fp32, so the tile stays in L2 (40 MB on an A100, 50 MB on an H100) between
// the GEMM that writes it and the kernel that reduces it, instead of a round trip through
// HBM that would cost more than the GEMM itself.
constexpr int64_t kTileElems = int64_t(1) << 22;
// Values of an op's per-call working copies of its inputs, which are read in place
// (ekfac_accumulate's rotated tokens): larger, so that lam is updated once per many
// examples. 2^25 values = 128 MiB in fp32, far below a card's memory.
constexpr int64_t kInputElems = int64_t(1) << 25;
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

// The dispatcher sends an op here when any input is on CUDA; the checks in csrc/checks.cpp
// have already put every other input on `t`'s device, so this is the one left: `t` itself.
inline void require_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " is on ", t.device(),
              " but the CUDA kernel needs every input on one CUDA device");
}

// TF32: every op opens with `const at::NoTF32Guard no_tf32;`, so its fp32 GEMMs run in full
// fp32 whatever the caller's setting (torch.backends.cuda.matmul.fp32_precision or
// allow_tf32): their accuracy is part of each op's contract (tests/test_ops.py bounds fp32
// at 2e-5; TF32 would give about 1e-3). The guard is thread-local and scoped: other threads
// and the caller's own matmuls keep their setting. bf16/fp16 GEMMs never use TF32.

}  // namespace cuda
}  // namespace gdig
