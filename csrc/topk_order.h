// The order in which score_stats ranks a row's scores for its top-k, shared by the CPU
// (csrc/score_stats.cpp) and CUDA (csrc/cuda/score_stats.cu) kernels.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define GDIG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GDIG_HOST_DEVICE inline
#endif

namespace gdig {

// Whether score `av` of seed `ai` ranks before score `bv` of seed `bi`: NaN above every
// number (as torch.topk and torch.sort rank it), then larger values first, and equal
// values (ties, +0 and -0, or two NaN) by lower seed index. This is a strict total order,
// so a row's top-k under it is unique: both kernels return the same values and indices
// for the same scores, those of a stable descending sort
// (torch.sort(descending=True, stable=True)), whose first k values are torch.topk's.
template <typename T>
GDIG_HOST_DEVICE bool ranks_before(T av, int64_t ai, T bv, int64_t bi) {
  const bool a_nan = av != av, b_nan = bv != bv;
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && av != bv) return av > bv;
  return ai < bi;
}

}  // namespace gdig
