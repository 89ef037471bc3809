// project_grads (CUDA): per-example projected gradient P_out^T G(b) P_in from projected
// tokens. Pure GEMM work, so it runs the shared ATen body (csrc/project_grads.cpp) on
// cuBLAS, with tiles of projected tokens sized for L2 (cuda::kTileElems): each is written
// by the projections and read straight back by the batched GEMM.
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

at::Tensor project_grads_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                              const at::Tensor& mask, const at::Tensor& p_in,
                              const at::Tensor& p_out) {
  const char* op = "project_grads";
  const auto acc = check_project_grads(acts, out_grads, mask, p_in, p_out);
  cuda::require_cuda(op, acts, "acts");
  const c10::cuda::CUDAGuard guard(acts.device());
  const at::NoTF32Guard no_tf32;  // see cuda_utils.cuh

  return project_grads_tiled(acts, out_grads, mask, p_in, p_out, acc, cuda::kTileElems);
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("project_grads", &gdig::project_grads_cuda); }
