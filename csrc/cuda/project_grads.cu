// project_grads (CUDA): per-example projected gradient P_out^T G(b) P_in from projected
// tokens. Pure GEMM work, so it goes through cuBLAS (fp32 accumulation) via ATen; tiling
// over examples only bounds the projected tokens held at once.
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

at::Tensor project_grads_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                              const at::Tensor& mask, const at::Tensor& p_in,
                              const at::Tensor& p_out) {
  const char* op = "project_grads";
  const auto acc = check_project_grads(acts, out_grads, mask, p_in, p_out);
  cuda::check_cuda(op, acts, "acts", acts, "acts");
  const c10::cuda::CUDAGuard guard(acts.device());

  const int64_t B = acts.size(0), T = acts.size(1);
  const int64_t k_in = p_in.size(1), k_out = p_out.size(1);
  auto out = at::empty({B, k_out, k_in}, acts.options().dtype(acc));
  if (B == 0) return out;
  const auto m = mask_as(mask, acc).unsqueeze(-1);
  const int64_t rows = tile_rows(T * (k_in + k_out), cuda::kTileElems, B);
  for (int64_t b0 = 0; b0 < B; b0 += rows) {
    const int64_t b1 = std::min(B, b0 + rows);
    auto a = at::matmul(acts.slice(0, b0, b1), p_in).to(acc);
    auto g = at::matmul(out_grads.slice(0, b0, b1), p_out).to(acc);
    g.mul_(m.slice(0, b0, b1));
    auto dst = out.slice(0, b0, b1);
    at::bmm_out(dst, g.transpose(1, 2), a);
  }
  return out;
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("project_grads", &gdig::project_grads_cuda); }
