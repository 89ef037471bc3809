// score_stats (CPU): n_pos / mean / min / top-k of cand @ seeds^T, one row tile at a time.
// Tiles are read straight from `cand`, so a memory-mapped pool is paged in chunk by chunk.
// One tile buffer is reused for the whole call: repeated large allocations would let
// glibc's growing mmap threshold keep freed tiles resident and inflate the peak.
// Each row is read once for all its statistics, top-k included (the CUDA kernel does the
// same in one kernel), in the order of csrc/topk_order.h.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <limits>

#include "gdig.h"
#include "topk_order.h"

namespace gdig {

namespace {
constexpr int64_t kTileElems = int64_t(1) << 22;  // scores held at once

// Scores arrive in the input dtype (bf16 GEMMs use the CPU's bf16 units and accumulate
// in fp32 inside); statistics are accumulated in acc_t (float, or double for double).
// NaN scores follow torch (gdig_ext/reference.py) and the CUDA kernel: a row holding one has
// mean NaN and min NaN (like torch.amin); NaN is not counted in n_pos (NaN > 0 is false) and
// ranks above every number in the top-k, as in torch.topk.
//
// Top-k: the row's scores are scanned in seed order and inserted into the row's k output
// slots, kept sorted by ranks_before; a score that does not rank before the k-th held one
// is passed over at once, so a row costs about S comparisons when k << S.
template <typename scalar_t, typename acc_t>
void reduce_rows(const scalar_t* sc, int64_t rows, int64_t S, int64_t k, int64_t* n_pos,
                 acc_t* mean, acc_t* mn, acc_t* top_val, int64_t* top_idx) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = sc + i * S;
      acc_t* tv = top_val + i * k;
      int64_t* ti = top_idx + i * k;
      int64_t pos = 0, held = 0;
      double sum = 0;  // wider than the scores: S may be large
      acc_t lo = std::numeric_limits<acc_t>::infinity();
      for (int64_t s = 0; s < S; ++s) {
        const acc_t x = static_cast<acc_t>(row[s]);
        pos += x > acc_t(0);
        sum += x;
        lo = (x < lo || x != x) ? x : lo;  // a NaN is kept: nothing compares below it
        if (k == 0 || (held == k && !ranks_before(x, s, tv[k - 1], ti[k - 1]))) continue;
        int64_t j = held < k ? held++ : k - 1;  // when full, the k-th held one drops out
        for (; j > 0 && ranks_before(x, s, tv[j - 1], ti[j - 1]); --j) {
          tv[j] = tv[j - 1];
          ti[j] = ti[j - 1];
        }
        tv[j] = x;
        ti[j] = s;
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
  if (N == 0) return {n_pos, mean, mn, top_val, top_idx};
  const auto seeds_t = seeds.t();
  const int64_t rows = tile_rows(S, kTileElems, N);
  auto buf = at::empty({rows, S}, seeds.options());
  for (int64_t c0 = 0; c0 < N; c0 += rows) {
    const int64_t c1 = std::min(N, c0 + rows);
    auto sc = buf.narrow(0, 0, c1 - c0);
    at::mm_out(sc, cand.slice(0, c0, c1), seeds_t);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, sc.scalar_type(), "score_stats_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          reduce_rows<scalar_t, acc_t>(sc.data_ptr<scalar_t>(), c1 - c0, S, k,
                                       n_pos.data_ptr<int64_t>() + c0, mean.data_ptr<acc_t>() + c0,
                                       mn.data_ptr<acc_t>() + c0, top_val.data_ptr<acc_t>() + c0 * k,
                                       top_idx.data_ptr<int64_t>() + c0 * k);
        });
  }
  return {n_pos, mean, mn, top_val, top_idx};
}

}  // namespace gdig
