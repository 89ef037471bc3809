// project_grads: per-example projected gradient P_out^T G(b) P_in, computed from projected
// tokens so that no d_out x d_in gradient is ever formed. The work is GEMMs only, so one
// ATen body (project_grads_tiled) serves both backends; CUDA calls it with its own tiles.
#include <ATen/ATen.h>

#include "gdig.h"

namespace gdig {

namespace {
constexpr int64_t kTileElems = int64_t(1) << 24;  // projected tokens held per tile
}

at::Tensor project_grads_tiled(const at::Tensor& acts, const at::Tensor& out_grads,
                               const at::Tensor& mask, const at::Tensor& p_in,
                               const at::Tensor& p_out, at::ScalarType acc, int64_t tile_elems) {
  const int64_t B = acts.size(0), T = acts.size(1);
  const int64_t k_in = p_in.size(1), k_out = p_out.size(1);
  auto out = at::empty({B, k_out, k_in}, acts.options().dtype(acc));
  if (B == 0) return out;
  const auto m = mask_as(mask, acc).unsqueeze(-1);
  const int64_t rows = tile_rows(T * (k_in + k_out), tile_elems, B);
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

at::Tensor project_grads_cpu(const at::Tensor& acts, const at::Tensor& out_grads,
                             const at::Tensor& mask, const at::Tensor& p_in,
                             const at::Tensor& p_out) {
  const auto acc = check_project_grads(acts, out_grads, mask, p_in, p_out);
  return project_grads_tiled(acts, out_grads, mask, p_in, p_out, acc, kTileElems);
}

}  // namespace gdig
