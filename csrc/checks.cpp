// Input validation shared by the CPU and CUDA kernels: one message per mistake,
// naming the argument, what was expected and what was given.
#include "gdig.h"

#include <algorithm>
#include <sstream>

namespace gdig {

namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

}  // namespace

void check_same(const char* op, const at::Tensor& ref, const char* ref_name,
                const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(),
              "; pass all floating inputs in one dtype");
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device(), "; move them to one device");
}

void check_shape(const char* op, const at::Tensor& t, const char* name,
                 at::IntArrayRef expected, const char* expected_text) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected_text, " = ",
              expected, ", got ", t.sizes());
}

at::ScalarType check_token_inputs(const char* op, const at::Tensor& acts,
                                  const at::Tensor& out_grads, const at::Tensor& mask) {
  TORCH_CHECK(acts.dim() == 3, op, ": acts must be 3-D [B,T,d_in], got shape ", acts.sizes());
  TORCH_CHECK(out_grads.dim() == 3, op, ": out_grads must be 3-D [B,T,d_out], got shape ",
              out_grads.sizes());
  TORCH_CHECK(is_supported_float(acts.scalar_type()), op,
              ": acts must be float32, float64, bfloat16 or float16, got ", acts.scalar_type());
  check_same(op, acts, "acts", out_grads, "out_grads");
  TORCH_CHECK(out_grads.size(0) == acts.size(0) && out_grads.size(1) == acts.size(1), op,
              ": out_grads [B,T,d_out] must match acts [B,T,d_in] in B and T; got acts ",
              acts.sizes(), " and out_grads ", out_grads.sizes());
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == acts.size(0) && mask.size(1) == acts.size(1),
              op, ": mask must have shape [B,T] = ", acts.sizes().slice(0, 2), ", got ",
              mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()), op,
              ": mask must be bool or a 0/1 floating tensor, got ", mask.scalar_type());
  TORCH_CHECK(mask.device() == acts.device(), op, ": mask is on ", mask.device(),
              " but acts is on ", acts.device(), "; move them to one device");
  return acts.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::ScalarType check_score_inputs(const at::Tensor& cand, const at::Tensor& seeds, int64_t k) {
  const char* op = "score_stats";
  TORCH_CHECK(cand.dim() == 2, op, ": cand must be 2-D [N,D], got shape ", cand.sizes());
  TORCH_CHECK(seeds.dim() == 2, op, ": seeds must be 2-D [S,D], got shape ", seeds.sizes());
  TORCH_CHECK(is_supported_float(cand.scalar_type()), op,
              ": cand must be float32, float64, bfloat16 or float16, got ", cand.scalar_type());
  TORCH_CHECK(seeds.scalar_type() == cand.scalar_type(), op, ": seeds has dtype ",
              seeds.scalar_type(), " but cand has dtype ", cand.scalar_type(),
              "; pass both in one dtype");
  TORCH_CHECK(cand.size(1) == seeds.size(1), op, ": cand [N,D] and seeds [S,D] must share D; got cand ",
              cand.sizes(), " and seeds ", seeds.sizes());
  TORCH_CHECK(seeds.size(0) >= 1, op, ": seeds must have at least one row (S >= 1)");
  TORCH_CHECK(k >= 0 && k <= seeds.size(0), op, ": k must be in [0, S] = [0, ", seeds.size(0),
              "], got k=", k);
  return cand.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::ScalarType check_project_grads(const at::Tensor& acts, const at::Tensor& out_grads,
                                   const at::Tensor& mask, const at::Tensor& p_in,
                                   const at::Tensor& p_out) {
  const char* op = "project_grads";
  const auto acc = check_token_inputs(op, acts, out_grads, mask);
  TORCH_CHECK(p_in.dim() == 2 && p_in.size(0) == acts.size(2), op,
              ": p_in must have shape [d_in,k_in] with d_in = ", acts.size(2), ", got ",
              p_in.sizes());
  TORCH_CHECK(p_out.dim() == 2 && p_out.size(0) == out_grads.size(2), op,
              ": p_out must have shape [d_out,k_out] with d_out = ", out_grads.size(2), ", got ",
              p_out.sizes());
  check_same(op, acts, "acts", p_in, "p_in");
  check_same(op, acts, "acts", p_out, "p_out");
  return acc;
}

at::ScalarType check_lowrank_benefit(const at::Tensor& acts, const at::Tensor& out_grads,
                                     const at::Tensor& mask, const at::Tensor& u,
                                     const at::Tensor& v) {
  const char* op = "lowrank_benefit";
  const auto acc = check_token_inputs(op, acts, out_grads, mask);
  TORCH_CHECK(u.dim() == 3 && u.size(2) == out_grads.size(2), op,
              ": u must have shape [S,r,d_out] with d_out = ", out_grads.size(2), ", got ",
              u.sizes());
  TORCH_CHECK(v.dim() == 3 && v.size(0) == u.size(0) && v.size(1) == u.size(1) &&
                  v.size(2) == acts.size(2),
              op, ": v must have shape [S,r,d_in] = [", u.size(0), ",", u.size(1), ",",
              acts.size(2), "] (S and r from u, d_in from acts), got ", v.sizes());
  check_same(op, acts, "acts", u, "u");
  check_same(op, acts, "acts", v, "v");
  return acc;
}

at::ScalarType check_ekfac_accumulate(const at::Tensor& acts, const at::Tensor& out_grads,
                                      const at::Tensor& mask, const at::Tensor& q_a,
                                      const at::Tensor& q_s, const at::Tensor& lam) {
  const char* op = "ekfac_accumulate";
  const auto acc = check_token_inputs(op, acts, out_grads, mask);
  const int64_t d_in = acts.size(2), d_out = out_grads.size(2);
  check_shape(op, q_a, "q_a", {d_in, d_in}, "[d_in,d_in]");
  check_shape(op, q_s, "q_s", {d_out, d_out}, "[d_out,d_out]");
  check_same(op, acts, "acts", q_a, "q_a");
  check_same(op, acts, "acts", q_s, "q_s");
  check_shape(op, lam, "lam", {d_out, d_in}, "[d_out,d_in]");
  TORCH_CHECK(lam.scalar_type() == at::kFloat || lam.scalar_type() == at::kDouble, op,
              ": lam must be float32 or float64 (it accumulates), got ", lam.scalar_type());
  TORCH_CHECK(acc != at::kDouble || lam.scalar_type() == at::kDouble, op,
              ": lam must be float64 for float64 inputs, got ", lam.scalar_type());
  TORCH_CHECK(lam.device() == acts.device(), op, ": lam is on ", lam.device(),
              " but acts is on ", acts.device(), "; move them to one device");
  TORCH_CHECK(lam.is_contiguous(), op, ": lam must be contiguous (it is written in place)");
  return acc;
}

at::Tensor mask_as(const at::Tensor& mask, at::ScalarType dtype) {
  return mask.to(dtype);
}

int64_t tile_rows(int64_t per_row_elems, int64_t budget_elems, int64_t total) {
  const int64_t rows = budget_elems / std::max<int64_t>(per_row_elems, 1);
  return std::max<int64_t>(1, std::min<int64_t>(rows, total));
}

}  // namespace gdig
