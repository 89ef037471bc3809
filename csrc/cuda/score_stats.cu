// score_stats (CUDA): n_pos / mean / min / top-k of cand @ seeds^T, one row tile at a time.
// `cand` may stay on the CPU (a memory-mapped pool): each tile is copied into pinned memory
// and sent to the GPU asynchronously, so reading the next tile overlaps this one's GEMM.
// Per tile: one cuBLAS GEMM for the scores, one kernel for n_pos/mean/min, at::topk.
#include <ATen/cuda/CUDAEvent.h>
#include <torch/library.h>

#include <limits>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

namespace {

// One warp per row of the [rows, S] score tile; sums in double like the CPU kernel, since
// S may be large. min propagates NaN like torch.amin.
template <typename scalar_t, typename acc_t>
__global__ void row_stats_kernel(const scalar_t* __restrict__ sc, int64_t rows, int64_t S,
                                 int64_t* __restrict__ n_pos, acc_t* __restrict__ mean,
                                 acc_t* __restrict__ mn) {
  const int lane = threadIdx.x % cuda::kWarp;
  const int64_t row = blockIdx.x * int64_t(blockDim.x / cuda::kWarp) + threadIdx.x / cuda::kWarp;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full
  const scalar_t* x = sc + row * S;
  long long pos = 0;
  double sum = 0;
  acc_t lo = std::numeric_limits<acc_t>::infinity();
  for (int64_t s = lane; s < S; s += cuda::kWarp) {
    const acc_t v = static_cast<acc_t>(x[s]);
    pos += v > acc_t(0);
    sum += static_cast<double>(v);
    lo = (v < lo || v != v) ? v : lo;
  }
  for (int off = cuda::kWarp / 2; off > 0; off >>= 1) {
    pos += __shfl_down_sync(0xffffffffu, pos, off);
    sum += __shfl_down_sync(0xffffffffu, sum, off);
    const acc_t other = __shfl_down_sync(0xffffffffu, lo, off);
    lo = (other < lo || other != other) ? other : lo;
  }
  if (lane == 0) {
    n_pos[row] = static_cast<int64_t>(pos);
    mean[row] = static_cast<acc_t>(sum / static_cast<double>(S));
    mn[row] = lo;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> score_stats_cuda(
    const at::Tensor& cand, const at::Tensor& seeds, int64_t k) {
  const char* op = "score_stats";
  const auto acc = check_score_inputs(cand, seeds, k);
  TORCH_CHECK(seeds.is_cuda(), op, ": the CUDA kernel needs seeds on a CUDA device (outputs ",
              "live there), got seeds on ", seeds.device(), " and cand on ", cand.device(),
              "; move seeds to the GPU or both to the CPU");
  TORCH_CHECK(cand.is_cpu() || cand.device() == seeds.device(), op, ": cand is on ",
              cand.device(), " but seeds is on ", seeds.device(),
              "; cand must be on the CPU (streamed) or on seeds' device");
  const c10::cuda::CUDAGuard guard(seeds.device());

  const int64_t N = cand.size(0), S = seeds.size(0);
  const auto opts = seeds.options().dtype(acc);
  auto n_pos = at::empty({N}, seeds.options().dtype(at::kLong));
  auto mean = at::empty({N}, opts);
  auto mn = at::empty({N}, opts);
  auto top_val = at::empty({N, k}, opts);
  auto top_idx = at::empty({N, k}, seeds.options().dtype(at::kLong));
  if (N == 0) return {n_pos, mean, mn, top_val, top_idx};

  const auto seeds_t = seeds.t();
  const auto stream = at::cuda::getCurrentCUDAStream();
  // A tile holds its scores and, when streamed, its copy of the candidates.
  const int64_t per_row = S + (cand.is_cpu() ? cand.size(1) : 0);
  const int64_t rows = tile_rows(per_row, cuda::kTileElems, N);
  const int64_t warps = cuda::kThreads / cuda::kWarp;
  at::cuda::CUDAEvent copied;  // recorded after each host-to-device copy of a tile
  for (int64_t c0 = 0; c0 < N; c0 += rows) {
    const int64_t c1 = std::min(N, c0 + rows);
    auto tile = cand.slice(0, c0, c1);
    if (tile.is_cpu()) {
      // pin_memory() takes a block from the caching host allocator, which does not hand it
      // out again until the asynchronous copy recorded on `stream` has finished.
      tile = tile.contiguous().pin_memory().to(seeds.device(), /*non_blocking=*/true);
      copied.record(stream);
    }
    const auto sc = at::mm(tile, seeds_t).contiguous();  // [rows,S] in the input dtype
    const int64_t nr = c1 - c0;
    const auto blocks = static_cast<unsigned int>((nr + warps - 1) / warps);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sc.scalar_type(),
                                    "score_stats_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      row_stats_kernel<scalar_t, acc_t><<<blocks, cuda::kThreads, 0, stream>>>(
          sc.data_ptr<scalar_t>(), nr, S, n_pos.data_ptr<int64_t>() + c0,
          mean.data_ptr<acc_t>() + c0, mn.data_ptr<acc_t>() + c0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (k > 0) {
      // The conversion to the output dtype is exact and monotonic: same order, same values.
      auto [vals, idx] = at::topk(sc, k, /*dim=*/1, /*largest=*/true, /*sorted=*/true);
      top_val.slice(0, c0, c1).copy_(vals);
      top_idx.slice(0, c0, c1).copy_(idx);
    }
  }
  if (cand.is_cpu()) {
    // When cand is already pinned (and contiguous), pin_memory() returns cand itself and the
    // asynchronous copy reads the caller's buffer: returning while it is in flight would let
    // the caller overwrite or free rows not yet sent. Wait for the last copy (copies run in
    // stream order, so for all of them); the GEMM and kernels queued after it stay async.
    copied.synchronize();
  }
  return {n_pos, mean, mn, top_val, top_idx};
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("score_stats", &gdig::score_stats_cuda); }
