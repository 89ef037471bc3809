// Schemas of the gdig ops and the CPU registrations; CUDA registers in csrc/cuda/.
#include <torch/extension.h>

#include "gdig.h"

TORCH_LIBRARY(gdig, m) {
  m.def("project_grads(Tensor acts, Tensor out_grads, Tensor mask, Tensor p_in, Tensor p_out)"
        " -> Tensor");
  m.def("lowrank_benefit(Tensor acts, Tensor out_grads, Tensor mask, Tensor u, Tensor v)"
        " -> Tensor");
  m.def("score_stats(Tensor cand, Tensor seeds, int k)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("ekfac_accumulate(Tensor acts, Tensor out_grads, Tensor mask, Tensor q_a, Tensor q_s,"
        " Tensor(a!) lam) -> ()");
}

TORCH_LIBRARY_IMPL(gdig, CPU, m) {
  m.impl("project_grads", &gdig::project_grads_cpu);
  m.impl("lowrank_benefit", &gdig::lowrank_benefit_cpu);
  m.impl("score_stats", &gdig::score_stats_cpu);
  m.impl("ekfac_accumulate", &gdig::ekfac_accumulate_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "cuda_compiled",
      []() {
#ifdef GDIG_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when the CUDA kernels were compiled into this build.");
}
