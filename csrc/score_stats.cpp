// score_stats (CPU): n_pos / mean / min / top-k of cand @ seeds^T, one row tile at a time.
// Tiles are read straight from `cand`, so a memory-mapped pool is paged in chunk by chunk.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <limits>

#include "gdig.h"

namespace gdig {

namespace {
constexpr int64_t kTileElems = int64_t(1) << 22;  // scores held at once

template <typename acc_t>
void reduce_rows(const acc_t* sc, int64_t rows, int64_t S, int64_t* n_pos, acc_t* mean,
                 acc_t* mn) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const acc_t* row = sc + i * S;
      int64_t pos = 0;
      double sum = 0;  // wider than the scores: S may be large
      acc_t lo = std::numeric_limits<acc_t>::infinity();
      for (int64_t s = 0; s < S; ++s) {
        const acc_t x = row[s];
        pos += x > acc_t(0);
        sum += x;
        lo = x < lo ? x : lo;
      }
      n_pos[i] = pos;
      mean[i] = static_cast<acc_t>(sum / static_cast<double>(S));
      mn[i] = lo;
    }
  });
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> score_stats_cpu(
    const at::Tensor& cand, const at::Tensor& seeds, int64_t k) {
  const auto acc = check_score_inputs(cand, seeds, k);
  TORCH_CHECK(cand.device().is_cpu() && seeds.device().is_cpu(),
              "score_stats: the CPU kernel needs cand and seeds on the CPU, got cand on ",
              cand.device(), " and seeds on ", seeds.device());
  const int64_t N = cand.size(0), S = seeds.size(0);
  auto opts = seeds.options().dtype(acc);
  auto n_pos = at::empty({N}, seeds.options().dtype(at::kLong));
  auto mean = at::empty({N}, opts);
  auto mn = at::empty({N}, opts);
  auto top_val = at::empty({N, k}, opts);
  auto top_idx = at::empty({N, k}, seeds.options().dtype(at::kLong));
  const auto seeds_t = seeds.t();
  const int64_t rows = tile_rows(S, kTileElems, N);
  for (int64_t c0 = 0; c0 < N; c0 += rows) {
    const int64_t c1 = std::min(N, c0 + rows);
    auto sc = at::mm(cand.slice(0, c0, c1), seeds_t).to(acc).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc, "score_stats_cpu", [&] {
      reduce_rows<scalar_t>(sc.data_ptr<scalar_t>(), c1 - c0, S,
                            n_pos.data_ptr<int64_t>() + c0, mean.data_ptr<scalar_t>() + c0,
                            mn.data_ptr<scalar_t>() + c0);
    });
    if (k > 0) {
      auto vals = top_val.slice(0, c0, c1);
      auto idx = top_idx.slice(0, c0, c1);
      at::topk_out(vals, idx, sc, k, /*dim=*/1, /*largest=*/true, /*sorted=*/true);
    }
  }
  return {n_pos, mean, mn, top_val, top_idx};
}

}  // namespace gdig
