// ekfac_accumulate (CPU): lam += sum_b (q_s^T G_b q_a)^2 without holding B x d_out x d_in.
// Tokens are rotated into the eigenbases first (cheaper than rotating G), then each tile of
// (examples x rows of d_out) is formed with one batched GEMM and squared into lam at once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "gdig.h"

namespace gdig {

namespace {
constexpr int64_t kTileElems = int64_t(1) << 22;  // rotated per-example gradients per tile

template <typename acc_t>
void square_accumulate(const acc_t* tile, int64_t bb, int64_t rows, int64_t d_in, acc_t* lam,
                       int64_t lam_stride) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t* dst = lam + i * lam_stride;
      for (int64_t b = 0; b < bb; ++b) {
        const acc_t* src = tile + (b * rows + i) * d_in;
#pragma omp simd
        for (int64_t j = 0; j < d_in; ++j) dst[j] += src[j] * src[j];
      }
    }
  });
}
}  // namespace

void ekfac_accumulate_cpu(const at::Tensor& acts, const at::Tensor& out_grads,
                          const at::Tensor& mask, const at::Tensor& q_a, const at::Tensor& q_s,
                          at::Tensor& lam) {
  check_ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam);
  const int64_t B = acts.size(0), d_in = acts.size(2), d_out = out_grads.size(2);
  if (B == 0) return;

  const auto lam_t = lam.scalar_type();
  auto a = at::matmul(acts, q_a).to(lam_t);
  auto g = at::matmul(out_grads, q_s).to(lam_t);
  g.mul_(mask_as(mask, lam_t).unsqueeze(-1));
  const auto gt = g.transpose(1, 2);  // [B,d_out,T]

  // Rows of d_out per tile: all of them when a single example fits, else a slice.
  const int64_t rows = tile_rows(d_in, kTileElems, d_out);
  const int64_t bb = tile_rows(rows * d_in, kTileElems, B);
  for (int64_t r0 = 0; r0 < d_out; r0 += rows) {
    const int64_t r1 = std::min(d_out, r0 + rows);
    for (int64_t b0 = 0; b0 < B; b0 += bb) {
      const int64_t b1 = std::min(B, b0 + bb);
      auto tile = at::bmm(gt.slice(0, b0, b1).slice(1, r0, r1), a.slice(0, b0, b1)).contiguous();
      AT_DISPATCH_FLOATING_TYPES(lam_t, "ekfac_accumulate_cpu", [&] {
        square_accumulate<scalar_t>(tile.data_ptr<scalar_t>(), b1 - b0, r1 - r0, d_in,
                                    lam.data_ptr<scalar_t>() + r0 * d_in, d_in);
      });
    }
  }
}

}  // namespace gdig
