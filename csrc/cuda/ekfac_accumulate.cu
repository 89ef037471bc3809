// ekfac_accumulate (CUDA): lam += sum_b (q_s^T G_b q_a)^2 without holding B x d_out x d_in.
// Tokens of a tile of examples are rotated into the eigenbases first (cheaper than rotating
// G), then each (examples x rows of d_out) tile of rotated gradients is formed with one
// cuBLAS batched GEMM and a kernel squares it and adds it into lam.
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

namespace {

// lam[j] += sum_b tile[b, j] ^ 2 over the bb examples of a [bb, n] contiguous tile; each
// element of lam is owned by one thread, so no atomics are needed.
template <typename acc_t>
__global__ void square_accumulate_kernel(const acc_t* __restrict__ tile, int64_t bb, int64_t n,
                                         acc_t* __restrict__ lam) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t b = 0; b < bb; ++b) {
      const acc_t x = tile[b * n + j];
      sum += x * x;
    }
    lam[j] += sum;
  }
}

}  // namespace

void ekfac_accumulate_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                           const at::Tensor& mask, const at::Tensor& q_a, const at::Tensor& q_s,
                           at::Tensor& lam) {
  const char* op = "ekfac_accumulate";
  check_ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam);
  const int64_t B = acts.size(0), T = acts.size(1);
  const int64_t d_in = acts.size(2), d_out = out_grads.size(2);
  cuda::check_cuda(op, acts, "acts", acts, "acts");
  const c10::cuda::CUDAGuard guard(acts.device());
  if (B == 0 || d_in == 0 || d_out == 0) return;

  const auto lam_t = lam.scalar_type();
  const auto m = mask_as(mask, lam_t).unsqueeze(-1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  // Rows of d_out per tile: all of them when a single example fits, else a slice. Examples
  // per tile then share the budget with their rotated tokens.
  const int64_t rows = tile_rows(d_in, cuda::kTileElems, d_out);
  const int64_t bb = tile_rows(rows * d_in + T * (d_in + d_out), cuda::kTileElems, B);
  for (int64_t b0 = 0; b0 < B; b0 += bb) {
    const int64_t b1 = std::min(B, b0 + bb);
    const auto a = at::matmul(acts.slice(0, b0, b1), q_a).to(lam_t);
    auto g = at::matmul(out_grads.slice(0, b0, b1), q_s).to(lam_t);
    g.mul_(m.slice(0, b0, b1));
    const auto gt = g.transpose(1, 2);  // [bb,d_out,T]
    for (int64_t r0 = 0; r0 < d_out; r0 += rows) {
      const int64_t r1 = std::min(d_out, r0 + rows);
      const auto tile = at::bmm(gt.slice(1, r0, r1), a).contiguous();  // [bb,rows,d_in]
      const int64_t n = (r1 - r0) * d_in;
      AT_DISPATCH_FLOATING_TYPES(lam_t, "ekfac_accumulate_cuda", [&] {
        square_accumulate_kernel<scalar_t><<<cuda::blocks_for(n), cuda::kThreads, 0, stream>>>(
            tile.data_ptr<scalar_t>(), b1 - b0, n, lam.data_ptr<scalar_t>() + r0 * d_in);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("ekfac_accumulate", &gdig::ekfac_accumulate_cuda); }
