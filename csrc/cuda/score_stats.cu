// score_stats (CUDA): n_pos / mean / min / top-k of cand @ seeds^T, one row tile at a time.
// Per tile: one cuBLAS GEMM for the scores, then one kernel that reads each row for all its
// statistics, top-k included (in the order of csrc/topk_order.h, as the CPU kernel), all on
// the caller's current stream. A tile holds at most cuda::kTileElems scores, so the kernel
// reads them from L2, where the GEMM just wrote them.
//
// `cand` may stay on the CPU (a memory-mapped pool) and is then sent tile by tile on a
// separate copy stream into two device buffers (double buffering): while the GPU scores
// tile i, tile i+1 is on its way. A pinned, contiguous `cand` is uploaded straight from the
// caller's memory; any other is first read by the CPU into one of two pinned staging
// buffers of a fixed size. Events order the two streams: a tile's GEMM waits for its copy,
// a copy into a device buffer waits for the GEMM that last read it, and the CPU waits for
// the copy that last read a staging buffer before refilling it.
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/library.h>

#include <limits>

#include "cuda_utils.cuh"
#include "gdig.h"
#include "topk_order.h"

namespace gdig {

namespace {

// Rows of a pinned staging buffer hold at most this many values (16 MiB in float32), so the
// pinned footprint of a streamed call is two such buffers, whatever N is.
constexpr int64_t kStageElems = int64_t(1) << 22;

// One warp per row of the [rows, S] score tile; sums in double like the CPU kernel, since
// S may be large. min propagates NaN like torch.amin.
//
// Top-k in the same pass over the tile: round j picks, among the scores ranked after round
// j-1's pick, the first in the order of ranks_before. Each lane scans its strided share of
// the row (from L1/L2 after the statistics' read) and the warp keeps the best of its lanes
// by a butterfly, so every lane ends the round with the same pick. k rounds of S/32 reads
// per lane: at S = 256 and the default k = 5, 40 reads, about what the statistics cost.
template <typename scalar_t, typename acc_t>
__global__ void row_stats_kernel(const scalar_t* __restrict__ sc, int64_t rows, int64_t S,
                                 int64_t k, int64_t* __restrict__ n_pos, acc_t* __restrict__ mean,
                                 acc_t* __restrict__ mn, acc_t* __restrict__ top_val,
                                 int64_t* __restrict__ top_idx) {
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
  acc_t prev_v = 0;
  long long prev_i = -1;  // no pick yet
  for (int64_t j = 0; j < k; ++j) {
    acc_t best_v = 0;
    long long best_i = -1;  // none of this lane's scores is left
    for (int64_t s = lane; s < S; s += cuda::kWarp) {
      const acc_t v = static_cast<acc_t>(x[s]);
      if (prev_i >= 0 && !ranks_before<acc_t>(prev_v, prev_i, v, s)) continue;  // picked
      if (best_i < 0 || ranks_before<acc_t>(v, s, best_v, best_i)) {
        best_v = v;
        best_i = s;
      }
    }
    for (int off = cuda::kWarp / 2; off > 0; off >>= 1) {
      const acc_t other_v = __shfl_xor_sync(0xffffffffu, best_v, off);
      const long long other_i = __shfl_xor_sync(0xffffffffu, best_i, off);
      if (other_i >= 0 && (best_i < 0 || ranks_before<acc_t>(other_v, other_i, best_v, best_i))) {
        best_v = other_v;
        best_i = other_i;
      }
    }
    if (lane == 0) {  // k <= S, so every round finds a score
      top_val[row * k + j] = best_v;
      top_idx[row * k + j] = static_cast<int64_t>(best_i);
    }
    prev_v = best_v;
    prev_i = best_i;
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
  const at::NoTF32Guard no_tf32;  // see cuda_utils.cuh

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
          sc.data_ptr<scalar_t>(), nr, S, k, n_pos.data_ptr<int64_t>() + c0,
          mean.data_ptr<acc_t>() + c0, mn.data_ptr<acc_t>() + c0,
          top_val.data_ptr<acc_t>() + c0 * k, top_idx.data_ptr<int64_t>() + c0 * k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  };
  const int64_t score_rows = tile_rows(S, cuda::kTileElems, N);  // scores of a tile: in L2

  if (!cand.is_cpu()) {  // already on the GPU
    for (int64_t c0 = 0; c0 < N; c0 += score_rows) {
      const int64_t c1 = std::min(N, c0 + score_rows);
      reduce_tile(at::mm(cand.slice(0, c0, c1), seeds_t).contiguous(), c0, c1);
    }
    return {n_pos, mean, mn, top_val, top_idx};
  }

  // Streamed: a tile's rows also fit one staging buffer (and so each device buffer).
  const int64_t rows = std::min(score_rows, tile_rows(D, kStageElems, N));
  // A pinned, contiguous cand is copied from where it is: its rows are already DMA-ready.
  const bool direct = cand.is_contiguous() && cand.is_pinned();
  const auto host_opts = cand.options().pinned_memory(true);
  at::Tensor host[2];
  if (!direct) {
    host[0] = at::empty({rows, D}, host_opts);
    host[1] = at::empty({rows, D}, host_opts);
  }
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
  at::cuda::CUDAEvent copied[2];    // recorded on copy_stream after the copy into dev[i]
  at::cuda::CUDAEvent consumed[2];  // recorded on `stream` after the GEMM that read dev[i]
  for (int64_t c0 = 0, i = 0; c0 < N; c0 += rows, ++i) {
    const int64_t c1 = std::min(N, c0 + rows), nr = c1 - c0;
    const int slot = static_cast<int>(i % 2);
    at::Tensor src = cand.slice(0, c0, c1);
    if (!direct) {
      // host[slot] was last read by the copy of tile i-2: wait for it before refilling.
      // (Before the first record of an event, synchronize() and block() do nothing.)
      copied[slot].synchronize();
      auto h = host[slot].narrow(0, 0, nr);
      h.copy_(src);  // on the CPU: pages in the rows of a memory-mapped pool
      src = h;
    }
    auto d = dev[slot].narrow(0, 0, nr);
    consumed[slot].block(copy_stream);  // dev[slot] was last read by tile i-2's GEMM
    {
      const c10::cuda::CUDAStreamGuard on_copy(copy_stream);
      // torch records a copy out of a staging buffer in the caching host allocator, so
      // host[slot] is not handed out to anyone else after this call until the copy is done.
      d.copy_(src, /*non_blocking=*/true);
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
  if (direct) {
    // The copy engine reads the caller's memory: the call must not return before the last
    // two copies are done (the caller may overwrite or free it at once). The GEMMs and the
    // statistics may still run.
    copied[0].synchronize();
    copied[1].synchronize();
    return {n_pos, mean, mn, top_val, top_idx};
  }
  // The caller's cand was only read by the CPU copies above, so nothing in flight reads it
  // once this returns: no host synchronisation is needed.
  return {n_pos, mean, mn, top_val, top_idx};
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("score_stats", &gdig::score_stats_cuda); }
