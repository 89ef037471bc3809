// lowrank_benefit (CUDA): <G_hat_s, G(b)> for rank-r seeds, tiled over (examples, seeds).
// Each tile projects the tokens onto the seeds' factors with two cuBLAS GEMMs (fp32
// accumulation), then one kernel reduces sum_t mask_t sum_k gu[t,k] av[t,k] per (b, s);
// the B x T x S*r products never exist and gu/av stay in the input dtype until read.
// gu and av together hold at most cuda::kTileElems values, so the reduction reads them
// from L2, where the GEMMs just wrote them, rather than from HBM.
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

namespace {

// V values of scalar_t read with one load (16 bytes when V > 1).
template <typename scalar_t, int V>
struct alignas(sizeof(scalar_t) * V) Pack {
  scalar_t v[V];
};

// One block per (seed s, example b) of the tile. The block's threads form a fixed grid of
// (token rows) x (lanes per row), set once from threadIdx: `lanes` consecutive threads share
// a token t and stride over its r values in packs of V, so the inner loops index with
// additions only (no division per element), and a row's lanes skip a padded token together.
// gu, av: [bb, T, sb*r] contiguous; mask: [bb, T]; out row stride out_stride (= S).
// V > 1 needs r % V == 0 and 16-byte aligned gu/av: then every row of r values starts aligned.
template <typename scalar_t, typename acc_t, int V>
__global__ void lowrank_reduce_kernel(const scalar_t* __restrict__ gu,
                                      const scalar_t* __restrict__ av,
                                      const acc_t* __restrict__ mask, acc_t* __restrict__ out,
                                      int64_t T, int64_t sb, int64_t r, int64_t out_stride,
                                      int lanes) {
  using P = Pack<scalar_t, V>;
  const int64_t s = blockIdx.x, b = blockIdx.y;
  const int64_t width = sb * r;
  const int64_t packs = r / V;  // packs of V values per token row
  const int lane = threadIdx.x % lanes;
  const int64_t row_step = blockDim.x / lanes;
  const acc_t* m = mask + b * T;
  const scalar_t* gu_b = gu + b * T * width + s * r;
  const scalar_t* av_b = av + b * T * width + s * r;
  acc_t total = 0;
  for (int64_t t = threadIdx.x / lanes; t < T; t += row_step) {
    const acc_t w = m[t];
    if (w == acc_t(0)) continue;  // padding: skip the reads, like the CPU kernel
    const P* x = reinterpret_cast<const P*>(gu_b + t * width);
    const P* y = reinterpret_cast<const P*>(av_b + t * width);
    acc_t dot = 0;
    for (int64_t p = lane; p < packs; p += lanes) {
      const P xp = x[p], yp = y[p];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        dot += static_cast<acc_t>(xp.v[i]) * static_cast<acc_t>(yp.v[i]);
      }
    }
    total += w * dot;
  }
  total = cuda::block_sum(total);
  if (threadIdx.x == 0) out[b * out_stride + s] = total;
}

// Lanes per token row: enough for one pass over the row's packs, a power of two that
// divides the block, at most a warp so that a row's loads stay within one warp.
int lanes_for(int64_t packs) {
  int lanes = 1;
  while (lanes < packs && lanes < cuda::kWarp) lanes *= 2;
  return lanes;
}

}  // namespace

at::Tensor lowrank_benefit_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                                const at::Tensor& mask, const at::Tensor& u,
                                const at::Tensor& v) {
  const char* op = "lowrank_benefit";
  const auto acc = check_lowrank_benefit(acts, out_grads, mask, u, v);
  cuda::require_cuda(op, acts, "acts");
  const c10::cuda::CUDAGuard guard(acts.device());
  const at::NoTF32Guard no_tf32;  // see cuda_utils.cuh

  const int64_t B = acts.size(0), T = acts.size(1);
  const int64_t S = u.size(0), r = u.size(1);
  auto out = at::zeros({B, S}, acts.options().dtype(acc));
  if (B == 0 || S == 0 || r == 0 || T == 0) return out;
  const auto m = mask_as(mask, acc).contiguous();
  const auto uf = u.reshape({S * r, u.size(2)});
  const auto vf = v.reshape({S * r, v.size(2)});
  const auto stream = at::cuda::getCurrentCUDAStream();

  // Seeds per tile: as many as fit with at least a few examples; then examples per tile.
  // Each of gu and av gets half the L2 budget.
  const int64_t per_tensor = cuda::kTileElems / 2;
  const int64_t sb = tile_rows(T * r * 8, per_tensor, S);
  for (int64_t s0 = 0; s0 < S; s0 += sb) {
    const int64_t s1 = std::min(S, s0 + sb);
    const auto ut = uf.slice(0, s0 * r, s1 * r).t();
    const auto vt = vf.slice(0, s0 * r, s1 * r).t();
    const int64_t bb = tile_rows(T * (s1 - s0) * r, per_tensor, B);
    for (int64_t b0 = 0; b0 < B; b0 += bb) {
      const int64_t b1 = std::min(B, b0 + bb);
      const auto gu = at::matmul(out_grads.slice(0, b0, b1), ut).contiguous();
      const auto av = at::matmul(acts.slice(0, b0, b1), vt).contiguous();
      const auto mt = m.slice(0, b0, b1).contiguous();
      // grid.y is limited to 65535 examples; bb is far below that for any real T*r,
      // but split the launch anyway so that no shape can break it.
      const int64_t tile_off = T * (s1 - s0) * r;  // values per example in gu/av
      for (int64_t y0 = 0; y0 < b1 - b0; y0 += 65535) {
        const int64_t ny = std::min<int64_t>(65535, b1 - b0 - y0);
        const dim3 grid(static_cast<unsigned int>(s1 - s0), static_cast<unsigned int>(ny));
        AT_DISPATCH_FLOATING_TYPES_AND2(
            at::kHalf, at::kBFloat16, gu.scalar_type(), "lowrank_benefit_cuda", [&] {
              using acc_t = at::opmath_type<scalar_t>;
              constexpr int kVec = 16 / sizeof(scalar_t);
              const scalar_t* gp = gu.data_ptr<scalar_t>() + y0 * tile_off;
              const scalar_t* ap = av.data_ptr<scalar_t>() + y0 * tile_off;
              const acc_t* mp = mt.data_ptr<acc_t>() + y0 * T;
              acc_t* dst = out.data_ptr<acc_t>() + (b0 + y0) * S + s0;
              const bool vec = r % kVec == 0 && reinterpret_cast<uintptr_t>(gp) % 16 == 0 &&
                               reinterpret_cast<uintptr_t>(ap) % 16 == 0;
              if (vec) {
                lowrank_reduce_kernel<scalar_t, acc_t, kVec>
                    <<<grid, cuda::kThreads, 0, stream>>>(gp, ap, mp, dst, T, s1 - s0, r, S,
                                                          lanes_for(r / kVec));
              } else {  // r not a multiple of a pack, or a misaligned base: scalar loads
                lowrank_reduce_kernel<scalar_t, acc_t, 1>
                    <<<grid, cuda::kThreads, 0, stream>>>(gp, ap, mp, dst, T, s1 - s0, r, S,
                                                          lanes_for(r));
              }
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
      }
    }
  }
  return out;
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("lowrank_benefit", &gdig::lowrank_benefit_cuda); }
