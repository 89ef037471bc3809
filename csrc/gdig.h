// Declarations shared by the CPU (csrc/*.cpp) and CUDA (csrc/cuda/*.cu) kernels.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace gdig {

// Input validation shared by both backends (csrc/checks.cpp). Each throws a
// c10::Error (RuntimeError in Python) naming the argument and expected shape.
// Returns the accumulation dtype: float64 for float64 inputs, else float32.
at::ScalarType check_token_inputs(const char* op, const at::Tensor& acts,
                                  const at::Tensor& out_grads, const at::Tensor& mask);
void check_same(const char* op, const at::Tensor& ref, const char* ref_name,
                const at::Tensor& t, const char* name);
void check_shape(const char* op, const at::Tensor& t, const char* name,
                 at::IntArrayRef expected, const char* expected_text);
at::ScalarType check_score_inputs(const at::Tensor& cand, const at::Tensor& seeds, int64_t k);
// Whole-op checks (token inputs plus the op's own arguments); return the accumulation dtype.
at::ScalarType check_project_grads(const at::Tensor& acts, const at::Tensor& out_grads,
                                   const at::Tensor& mask, const at::Tensor& p_in,
                                   const at::Tensor& p_out);
at::ScalarType check_lowrank_benefit(const at::Tensor& acts, const at::Tensor& out_grads,
                                     const at::Tensor& mask, const at::Tensor& u,
                                     const at::Tensor& v);
at::ScalarType check_ekfac_accumulate(const at::Tensor& acts, const at::Tensor& out_grads,
                                      const at::Tensor& mask, const at::Tensor& q_a,
                                      const at::Tensor& q_s, const at::Tensor& lam);
// Mask as 0/1 in the accumulation dtype, on acts' device: [B,T].
at::Tensor mask_as(const at::Tensor& mask, at::ScalarType dtype);

// Rows of B processed at once so that a tile holds about `budget_elems` values.
int64_t tile_rows(int64_t per_row_elems, int64_t budget_elems, int64_t total);

// Device-agnostic body of project_grads (ATen GEMMs only), tiled over examples.
at::Tensor project_grads_tiled(const at::Tensor& acts, const at::Tensor& out_grads,
                               const at::Tensor& mask, const at::Tensor& p_in,
                               const at::Tensor& p_out, at::ScalarType acc, int64_t tile_elems);

at::Tensor project_grads_cpu(const at::Tensor& acts, const at::Tensor& out_grads,
                             const at::Tensor& mask, const at::Tensor& p_in,
                             const at::Tensor& p_out);
at::Tensor lowrank_benefit_cpu(const at::Tensor& acts, const at::Tensor& out_grads,
                               const at::Tensor& mask, const at::Tensor& u,
                               const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> score_stats_cpu(
    const at::Tensor& cand, const at::Tensor& seeds, int64_t k);
void ekfac_accumulate_cpu(const at::Tensor& acts, const at::Tensor& out_grads,
                          const at::Tensor& mask, const at::Tensor& q_a,
                          const at::Tensor& q_s, at::Tensor& lam);

#ifdef GDIG_WITH_CUDA
at::Tensor project_grads_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                              const at::Tensor& mask, const at::Tensor& p_in,
                              const at::Tensor& p_out);
at::Tensor lowrank_benefit_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                                const at::Tensor& mask, const at::Tensor& u,
                                const at::Tensor& v);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> score_stats_cuda(
    const at::Tensor& cand, const at::Tensor& seeds, int64_t k);
void ekfac_accumulate_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                           const at::Tensor& mask, const at::Tensor& q_a,
                           const at::Tensor& q_s, at::Tensor& lam);
#endif

}  // namespace gdig
