// lowrank_benefit (CPU): <G_hat_s, G(b)> for rank-r seeds, tiled over (examples, seeds).
// Each tile projects the tokens onto the seeds' factors with two GEMMs (in the input dtype,
// so bf16 uses the CPU's bf16 units), then one fused pass reduces
// sum_t mask_t sum_k gu[t,k] av[t,k] in float; the B x T x S*r products never exist, and
// the two tile buffers are allocated once per call.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "gdig.h"

namespace gdig {

namespace {
constexpr int64_t kTileElems = int64_t(1) << 22;  // per projected tensor in one tile

template <typename scalar_t, typename acc_t>
void reduce_tile(const scalar_t* gu, const scalar_t* av, const acc_t* mask, acc_t* out,
                 int64_t bb, int64_t T, int64_t sb, int64_t r, int64_t out_stride) {
  const int64_t width = sb * r;
  at::parallel_for(0, bb * sb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / sb, s = idx % sb;
      acc_t total = 0;
      for (int64_t t = 0; t < T; ++t) {
        const acc_t w = mask[b * T + t];
        if (w == acc_t(0)) continue;  // padding: skip the work, not just the value
        const scalar_t* x = gu + (b * T + t) * width + s * r;
        const scalar_t* y = av + (b * T + t) * width + s * r;
        acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < r; ++k) dot += static_cast<acc_t>(x[k]) * static_cast<acc_t>(y[k]);
        total += w * dot;
      }
      out[b * out_stride + s] += total;
    }
  });
}
}  // namespace

at::Tensor lowrank_benefit_cpu(const at::Tensor& acts, const at::Tensor& out_grads,
                               const at::Tensor& mask, const at::Tensor& u,
                               const at::Tensor& v) {
  const auto acc = check_lowrank_benefit(acts, out_grads, mask, u, v);

  const int64_t B = acts.size(0), T = acts.size(1);
  const int64_t S = u.size(0), r = u.size(1);
  auto out = at::zeros({B, S}, acts.options().dtype(acc));
  if (B == 0 || S == 0 || r == 0 || T == 0) return out;
  const auto m = mask_as(mask, acc).contiguous();
  const auto uf = u.reshape({S * r, u.size(2)});
  const auto vf = v.reshape({S * r, v.size(2)});

  // Seeds per tile: as many as fit with at least a few examples; then examples per tile.
  const int64_t sb = tile_rows(T * r * 8, kTileElems, S);
  const int64_t bb_max = tile_rows(T * sb * r, kTileElems, B);
  auto gu_buf = at::empty({bb_max * T * sb * r}, acts.options());
  auto av_buf = at::empty({bb_max * T * sb * r}, acts.options());
  for (int64_t s0 = 0; s0 < S; s0 += sb) {
    const int64_t s1 = std::min(S, s0 + sb);
    const int64_t width = (s1 - s0) * r;
    const auto ut = uf.slice(0, s0 * r, s1 * r).t();
    const auto vt = vf.slice(0, s0 * r, s1 * r).t();
    const int64_t bb = bb_max;  // the buffers are sized for bb_max full-width tiles
    for (int64_t b0 = 0; b0 < B; b0 += bb) {
      const int64_t b1 = std::min(B, b0 + bb);
      auto gu = gu_buf.narrow(0, 0, (b1 - b0) * T * width).view({(b1 - b0) * T, width});
      auto av = av_buf.narrow(0, 0, (b1 - b0) * T * width).view({(b1 - b0) * T, width});
      at::mm_out(gu, out_grads.slice(0, b0, b1).reshape({-1, out_grads.size(2)}), ut);
      at::mm_out(av, acts.slice(0, b0, b1).reshape({-1, acts.size(2)}), vt);
      auto mt = m.slice(0, b0, b1);  // rows of a contiguous [B,T]: still contiguous
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kBFloat16, at::kHalf, gu.scalar_type(), "lowrank_benefit_cpu", [&] {
            using acc_t = at::opmath_type<scalar_t>;
            reduce_tile<scalar_t, acc_t>(gu.data_ptr<scalar_t>(), av.data_ptr<scalar_t>(),
                                         mt.data_ptr<acc_t>(),
                                         out.data_ptr<acc_t>() + b0 * S + s0, b1 - b0, T,
                                         s1 - s0, r, S);
          });
    }
  }
  return out;
}

}  // namespace gdig
