// ekfac_accumulate (CPU): lam += sum_b (q_s^T G_b q_a)^2 without holding B x d_out x d_in.
// Tokens are rotated into the eigenbases first (cheaper than rotating G), then each tile of
// (examples x rows of d_out) is formed with one batched GEMM into a reused buffer and
// squared into lam in one pass. bf16 inputs keep the GEMMs in bf16 (the CPU's bf16 units
// accumulate in fp32; only each rotated entry is rounded to bf16) and square in float;
// float16 is widened first because its range cannot hold every rotated entry.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "gdig.h"

namespace gdig {

namespace {
constexpr int64_t kTileElems = int64_t(1) << 22;  // rotated per-example gradients per tile

template <typename scalar_t, typename acc_t>
void square_accumulate(const scalar_t* tile, int64_t bb, int64_t rows, int64_t d_in, acc_t* lam,
                       int64_t lam_stride) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t* dst = lam + i * lam_stride;
      for (int64_t b = 0; b < bb; ++b) {
        const scalar_t* src = tile + (b * rows + i) * d_in;
#pragma omp simd
        for (int64_t j = 0; j < d_in; ++j) {
          const acc_t x = static_cast<acc_t>(src[j]);
          dst[j] += x * x;
        }
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
  const auto work_t = acts.scalar_type() == at::kBFloat16 ? at::kBFloat16 : lam_t;
  auto a = at::matmul(acts, q_a).to(work_t);
  auto g = at::matmul(out_grads, q_s).to(work_t);
  g.mul_(mask_as(mask, work_t).unsqueeze(-1));
  const auto gt = g.transpose(1, 2);  // [B,d_out,T]

  // Rows of d_out per tile: all of them when a single example fits, else a slice.
  const int64_t rows = tile_rows(d_in, kTileElems, d_out);
  const int64_t bb = tile_rows(rows * d_in, kTileElems, B);
  auto buf = at::empty({bb * rows * d_in}, a.options());
  for (int64_t r0 = 0; r0 < d_out; r0 += rows) {
    const int64_t r1 = std::min(d_out, r0 + rows);
    for (int64_t b0 = 0; b0 < B; b0 += bb) {
      const int64_t b1 = std::min(B, b0 + bb);
      auto tile = buf.narrow(0, 0, (b1 - b0) * (r1 - r0) * d_in).view({b1 - b0, r1 - r0, d_in});
      at::bmm_out(tile, gt.slice(0, b0, b1).slice(1, r0, r1), a.slice(0, b0, b1));
      AT_DISPATCH_FLOATING_TYPES(lam_t, "ekfac_accumulate_cpu", [&] {
        auto* dst = lam.data_ptr<scalar_t>() + r0 * d_in;
        if (work_t == at::kBFloat16) {
          square_accumulate<at::BFloat16, scalar_t>(tile.data_ptr<at::BFloat16>(), b1 - b0,
                                                    r1 - r0, d_in, dst, d_in);
        } else {
          square_accumulate<scalar_t, scalar_t>(tile.data_ptr<scalar_t>(), b1 - b0, r1 - r0,
                                                d_in, dst, d_in);
        }
      });
    }
  }
}

}  // namespace gdig
