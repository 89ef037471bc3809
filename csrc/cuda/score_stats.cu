// score_stats (CUDA): n_pos / mean / min / top-k of cand @ seeds^T, one row tile at a time.
// Per tile: one cuBLAS GEMM for the scores, one kernel for n_pos/mean/min, at::topk, all on
// the caller's current stream.
//
// `cand` may stay on the CPU (a memory-mapped pool). It is then staged through two pinned
// buffers of a fixed size (double buffering) and sent on a separate copy stream: while the
// GPU scores tile i, the CPU reads tile i+1 into the other buffer and the copy engine sends
// it. Events order the two streams: a tile's GEMM waits for its copy, a copy into a device
// buffer waits for the GEMM that last read it, and the CPU waits for the copy that last
// read a pinned buffer before refilling it.
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/library.h>

#include <limits>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

namespace {

// Rows of a pinned staging buffer hold at most this many values (16 MiB in float32), so the
// pinned footprint of a streamed call is two such buffers, whatever N is.
constexpr int64_t kStageElems = int64_t(1) << 22;

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

  const int64_t N = cand.size(0), D = cand.size(1), S = seeds.size(0);
  const auto opts = seeds.options().dtype(acc);
  auto n_pos = at::empty({N}, seeds.options().dtype(at::kLong));
  auto mean = at::empty({N}, opts);
  auto mn = at::empty({N}, opts);
  auto top_val = at::empty({N, k}, opts);
  auto top_idx = at::empty({N, k}, seeds.options().dtype(at::kLong));
  if (N == 0) return {n_pos, mean, mn, top_val, top_idx};

  const auto seeds_t = seeds.t();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t warps = cuda::kThreads / cuda::kWarp;
  // Statistics of the [c1-c0, S] scores `sc` into rows [c0, c1) of the outputs.
  auto reduce_tile = [&](const at::Tensor& sc, int64_t c0, int64_t c1) {
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
  };

  if (!cand.is_cpu()) {  // already on the GPU: a tile holds its scores only
    const int64_t rows = tile_rows(S, cuda::kTileElems, N);
    for (int64_t c0 = 0; c0 < N; c0 += rows) {
      const int64_t c1 = std::min(N, c0 + rows);
      reduce_tile(at::mm(cand.slice(0, c0, c1), seeds_t).contiguous(), c0, c1);
    }
    return {n_pos, mean, mn, top_val, top_idx};
  }

  // Streamed: a tile holds its scores and two device copies of candidates; its rows also
  // fit one pinned staging buffer.
  const int64_t rows =
      std::min(tile_rows(S + 2 * D, cuda::kTileElems, N), tile_rows(D, kStageElems, N));
  const auto host_opts = cand.options().pinned_memory(true);
  at::Tensor host[2] = {at::empty({rows, D}, host_opts), at::empty({rows, D}, host_opts)};
  at::Tensor dev[2] = {at::empty({rows, D}, seeds.options()),
                       at::empty({rows, D}, seeds.options())};
  auto copy_stream = at::cuda::getStreamFromPool(/*isHighPriority=*/false,
                                                 seeds.device().index());
  if (copy_stream == stream) {  // the caller may run on a pool stream; the pool is round-robin
    copy_stream = at::cuda::getStreamFromPool(false, seeds.device().index());
  }
  {
    // The device buffers may reuse blocks that kernels queued earlier on `stream` still
    // read: copies into them must start after those.
    at::cuda::CUDAEvent ready;
    ready.record(stream);
    ready.block(copy_stream);
  }
  at::cuda::CUDAEvent copied[2];    // recorded on copy_stream after a copy out of host[i]
  at::cuda::CUDAEvent consumed[2];  // recorded on `stream` after the GEMM that read dev[i]
  for (int64_t c0 = 0, i = 0; c0 < N; c0 += rows, ++i) {
    const int64_t c1 = std::min(N, c0 + rows), nr = c1 - c0;
    const int slot = static_cast<int>(i % 2);
    // host[slot] was last read by the copy of tile i-2: wait for it before refilling.
    // (Before the first record of an event, synchronize() and block() do nothing.)
    copied[slot].synchronize();
    auto h = host[slot].narrow(0, 0, nr);
    h.copy_(cand.slice(0, c0, c1));  // on the CPU: pages in the rows of a memory-mapped pool
    auto d = dev[slot].narrow(0, 0, nr);
    consumed[slot].block(copy_stream);  // dev[slot] was last read by tile i-2's GEMM
    {
      const c10::cuda::CUDAStreamGuard on_copy(copy_stream);
      // torch records this copy in the caching host allocator, so host[slot] is not handed
      // out to anyone else after this call until the copy is done.
      d.copy_(h, /*non_blocking=*/true);
    }
    copied[slot].record(copy_stream);
    copied[slot].block(stream);
    const auto sc = at::mm(d, seeds_t).contiguous();  // [nr,S] in the input dtype
    consumed[slot].record(stream);
    reduce_tile(sc, c0, c1);
  }
  // Every copy is followed by a wait of `stream` on it, so work queued later on `stream`
  // cannot overtake them; recording the copy stream on the device buffers keeps that true
  // for the caching allocator too, whichever stream reuses their blocks.
  for (const auto& t : dev) {
    c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), copy_stream);
  }
  // The caller's cand was only read by the CPU copies above, so nothing in flight reads it
  // once this returns: no host synchronisation is needed.
  return {n_pos, mean, mn, top_val, top_idx};
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("score_stats", &gdig::score_stats_cuda); }
