// lowrank_benefit (CUDA): <G_hat_s, G(b)> for rank-r seeds, tiled over (examples, seeds).
// Each tile projects the tokens onto the seeds' factors with two cuBLAS GEMMs (fp32
// accumulation), then one kernel reduces sum_t mask_t sum_k gu[t,k] av[t,k] per (b, s);
// the B x T x S*r products never exist and gu/av stay in the input dtype until read.
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

namespace {

// One block per (seed s, example b) of the tile: threads stride over the T*r products.
// gu, av: [bb, T, sb*r] contiguous; mask: [bb, T]; out row stride out_stride (= S).
template <typename scalar_t, typename acc_t>
__global__ void lowrank_reduce_kernel(const scalar_t* __restrict__ gu,
                                      const scalar_t* __restrict__ av,
                                      const acc_t* __restrict__ mask, acc_t* __restrict__ out,
                                      int64_t T, int64_t sb, int64_t r, int64_t out_stride) {
  const int64_t s = blockIdx.x, b = blockIdx.y;
  const int64_t width = sb * r;
  const int64_t n = T * r;
  acc_t total = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t t = i / r, k = i - t * r;
    const acc_t w = mask[b * T + t];
    if (w == acc_t(0)) continue;  // padding: skip the reads, like the CPU kernel
    const int64_t idx = (b * T + t) * width + s * r + k;
    total += w * static_cast<acc_t>(gu[idx]) * static_cast<acc_t>(av[idx]);
  }
  total = cuda::block_sum(total);
  if (threadIdx.x == 0) out[b * out_stride + s] = total;
}

}  // namespace

at::Tensor lowrank_benefit_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                                const at::Tensor& mask, const at::Tensor& u,
                                const at::Tensor& v) {
  const char* op = "lowrank_benefit";
  const auto acc = check_lowrank_benefit(acts, out_grads, mask, u, v);
  cuda::check_cuda(op, acts, "acts", acts, "acts");
  const c10::cuda::CUDAGuard guard(acts.device());

  const int64_t B = acts.size(0), T = acts.size(1);
  const int64_t S = u.size(0), r = u.size(1);
  auto out = at::zeros({B, S}, acts.options().dtype(acc));
  if (B == 0 || S == 0 || r == 0 || T == 0) return out;
  const auto m = mask_as(mask, acc).contiguous();
  const auto uf = u.reshape({S * r, u.size(2)});
  const auto vf = v.reshape({S * r, v.size(2)});
  const auto stream = at::cuda::getCurrentCUDAStream();

  // Seeds per tile: as many as fit with at least a few examples; then examples per tile.
  const int64_t sb = tile_rows(T * r * 8, cuda::kTileElems, S);
  for (int64_t s0 = 0; s0 < S; s0 += sb) {
    const int64_t s1 = std::min(S, s0 + sb);
    const auto ut = uf.slice(0, s0 * r, s1 * r).t();
    const auto vt = vf.slice(0, s0 * r, s1 * r).t();
    const int64_t bb = tile_rows(T * (s1 - s0) * r, cuda::kTileElems, B);
    for (int64_t b0 = 0; b0 < B; b0 += bb) {
      const int64_t b1 = std::min(B, b0 + bb);
      const auto gu = at::matmul(out_grads.slice(0, b0, b1), ut).contiguous();
      const auto av = at::matmul(acts.slice(0, b0, b1), vt).contiguous();
      const auto mt = m.slice(0, b0, b1).contiguous();
      // grid.y is limited to 65535 examples; bb is far below that for any real T*r,
      // but split the launch anyway so that no shape can break it.
      for (int64_t y0 = 0; y0 < b1 - b0; y0 += 65535) {
        const int64_t ny = std::min<int64_t>(65535, b1 - b0 - y0);
        const dim3 grid(static_cast<unsigned int>(s1 - s0), static_cast<unsigned int>(ny));
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, gu.scalar_type(), "lowrank_benefit_cuda", [&] {
              using acc_t = at::opmath_type<scalar_t>;
              lowrank_reduce_kernel<scalar_t, acc_t><<<grid, cuda::kThreads, 0, stream>>>(
                  gu.data_ptr<scalar_t>() + y0 * T * (s1 - s0) * r,
                  av.data_ptr<scalar_t>() + y0 * T * (s1 - s0) * r,
                  mt.data_ptr<acc_t>() + y0 * T,
                  out.data_ptr<acc_t>() + (b0 + y0) * S + s0, T, s1 - s0, r, S);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
      }
    }
  }
  return out;
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("lowrank_benefit", &gdig::lowrank_benefit_cuda); }
