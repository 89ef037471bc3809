// ekfac_accumulate (CUDA): lam += sum_b (q_s^T G_b q_a)^2 without holding B x d_out x d_in.
// Tokens of a pass of examples are rotated into the eigenbases first (cheaper than rotating
// G), then each (examples x rows of d_out) tile of rotated gradients is formed with one
// batched GEMM and a kernel squares it and adds it into lam.
//
// bf16/fp16 inputs keep the rotated tokens in the input dtype and form the tile with
// cublasGemmStridedBatchedEx (bf16/fp16 A and B, fp32 C, fp32 accumulation): tensor cores,
// and each rotated entry is written in fp32, so fp16's range never has to hold it. Products
// of bf16/fp16 values are exact in fp32, so this is as accurate as widening the tokens first.
// float32 and float64 inputs take the ATen path (at::bmm in lam's dtype), TF32 off.
//
// Sizes: a pass takes as many examples as their rotated tokens fit cuda::kInputElems, so
// lam is read and written once per pass (at d_in = d_out = 4096, T = 256: 16 examples).
// A tile of rotated gradients (all examples of the pass, a slice of d_out's rows) holds at
// most cuda::kTileElems values, so it is still in L2 when the square kernel reads it: the
// tile costs one GEMM's writes to L2 rather than a write and a read of HBM.
#include <ATen/cuda/Exceptions.h>
#include <torch/library.h>

#include <climits>

#include "cuda_utils.cuh"
#include "gdig.h"

namespace gdig {

namespace {

// cuBLAS batch counts beyond the grid's z limit are not portable across versions.
constexpr int64_t kMaxBatch = 65535;

// lam[j] += sum_b tile[b, j] ^ 2 over the bb examples of a [bb, n] contiguous tile; each
// element of lam is owned by one thread, so no atomics are needed. The squares are summed
// in lam's dtype.
template <typename tile_t, typename lam_t>
__global__ void square_accumulate_kernel(const tile_t* __restrict__ tile, int64_t bb, int64_t n,
                                         lam_t* __restrict__ lam) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    lam_t sum = 0;
    for (int64_t b = 0; b < bb; ++b) {
      const lam_t x = static_cast<lam_t>(tile[b * n + j]);
      sum += x * x;
    }
    lam[j] += sum;
  }
}

void square_accumulate(const at::Tensor& tile, int64_t bb, int64_t n, at::Tensor& lam,
                       int64_t offset, cudaStream_t stream) {
  const auto blocks = cuda::blocks_for(n);
  if (lam.scalar_type() == at::kDouble && tile.scalar_type() == at::kDouble) {
    square_accumulate_kernel<double, double><<<blocks, cuda::kThreads, 0, stream>>>(
        tile.data_ptr<double>(), bb, n, lam.data_ptr<double>() + offset);
  } else if (lam.scalar_type() == at::kDouble) {  // bf16/fp16 inputs, float64 lam
    square_accumulate_kernel<float, double><<<blocks, cuda::kThreads, 0, stream>>>(
        tile.data_ptr<float>(), bb, n, lam.data_ptr<double>() + offset);
  } else {
    square_accumulate_kernel<float, float><<<blocks, cuda::kThreads, 0, stream>>>(
        tile.data_ptr<float>(), bb, n, lam.data_ptr<float>() + offset);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// tile[b] (rows x d_in, fp32) = g[b, :, r0:r0+rows]^T a[b] for the nb examples of a tile.
// a [nb,T,d_in] and g [nb,T,d_out] are contiguous, in bf16 or fp16. cuBLAS is column-major:
// the row-major tile [rows, d_in] is the column-major d_in x rows matrix
// a[b]^T (d_in x T, a's memory read as is) times g[b, :, r0:]  (T x rows, g's memory read
// transposed with leading dimension d_out).
void rotated_tile_lowp(const at::Tensor& a, const at::Tensor& g, int64_t r0, int64_t rows,
                       at::Tensor& tile) {
  const int64_t nb = a.size(0), T = a.size(1), d_in = a.size(2), d_out = g.size(2);
  TORCH_CHECK(d_in <= INT_MAX && d_out <= INT_MAX && T <= INT_MAX && nb <= kMaxBatch,
              "ekfac_accumulate: sizes too large for one cuBLAS call (T=", T, ", d_in=", d_in,
              ", d_out=", d_out, ")");
  const cudaDataType_t in_t = a.scalar_type() == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
  const float alpha = 1.0f, beta = 0.0f;
  // The handle comes bound to the current stream and with torch's workspace.
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  const auto elem = a.element_size();
  const char* a_ptr = static_cast<const char*>(a.data_ptr());
  const char* g_ptr = static_cast<const char*>(g.data_ptr()) + r0 * elem;
  TORCH_CUDABLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(d_in), static_cast<int>(rows),
      static_cast<int>(T), &alpha, a_ptr, in_t, static_cast<int>(d_in),
      static_cast<long long>(T * d_in), g_ptr, in_t, static_cast<int>(d_out),
      static_cast<long long>(T * d_out), &beta, tile.data_ptr<float>(), CUDA_R_32F,
      static_cast<int>(d_in), static_cast<long long>(rows * d_in), static_cast<int>(nb),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void ekfac_accumulate_cuda(const at::Tensor& acts, const at::Tensor& out_grads,
                           const at::Tensor& mask, const at::Tensor& q_a, const at::Tensor& q_s,
                           at::Tensor& lam) {
  const char* op = "ekfac_accumulate";
  check_ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam);
  const int64_t B = acts.size(0), T = acts.size(1);
  const int64_t d_in = acts.size(2), d_out = out_grads.size(2);
  cuda::require_cuda(op, acts, "acts");
  const c10::cuda::CUDAGuard guard(acts.device());
  const at::NoTF32Guard no_tf32;  // see cuda_utils.cuh
  // No example or no token: every G_b is zero and lam stays as it is.
  if (B == 0 || T == 0 || d_in == 0 || d_out == 0) return;

  const auto lam_t = lam.scalar_type();
  const auto in_t = acts.scalar_type();
  const bool lowp = in_t == at::kBFloat16 || in_t == at::kHalf;
  const auto work_t = lowp ? in_t : lam_t;      // dtype of the rotated tokens
  const auto tile_t = lowp ? at::kFloat : lam_t;  // dtype of the rotated gradients
  const auto m = mask_as(mask, work_t).unsqueeze(-1);
  const auto stream = at::cuda::getCurrentCUDAStream();

  // Examples per pass: their rotated tokens within the input budget.
  const int64_t bb = std::min(tile_rows(T * (d_in + d_out), cuda::kInputElems, B), kMaxBatch);
  // Rows of d_out per tile: every example of a pass within the L2 budget, a multiple of 8
  // when sliced so that each slice of g starts 16-byte aligned. Only when even 8 rows of
  // all of them would not fit (d_in in the tens of thousands) does a tile take fewer
  // examples (eb) than the pass holds.
  int64_t rows = tile_rows(bb * d_in, cuda::kTileElems, d_out);
  if (rows < d_out) rows = std::max<int64_t>(rows - rows % 8, std::min<int64_t>(8, d_out));
  const int64_t eb = tile_rows(rows * d_in, cuda::kTileElems, bb);
  auto buf = at::empty({eb * rows * d_in}, lam.options().dtype(tile_t));
  for (int64_t b0 = 0; b0 < B; b0 += bb) {
    const int64_t b1 = std::min(B, b0 + bb), nb = b1 - b0;
    auto a = at::matmul(acts.slice(0, b0, b1), q_a).to(work_t).contiguous();  // [nb,T,d_in]
    auto g = at::matmul(out_grads.slice(0, b0, b1), q_s).to(work_t).contiguous();
    g.mul_(m.slice(0, b0, b1));  // 0/1 mask: exact in every dtype
    for (int64_t e0 = 0; e0 < nb; e0 += eb) {
      const int64_t ne = std::min(eb, nb - e0);
      const auto ae = a.slice(0, e0, e0 + ne);  // leading slices: still contiguous
      const auto ge = g.slice(0, e0, e0 + ne);
      for (int64_t r0 = 0; r0 < d_out; r0 += rows) {
        const int64_t r1 = std::min(d_out, r0 + rows);
        auto tile = buf.narrow(0, 0, ne * (r1 - r0) * d_in).view({ne, r1 - r0, d_in});
        if (lowp) {
          rotated_tile_lowp(ae, ge, r0, r1 - r0, tile);
        } else {
          at::bmm_out(tile, ge.transpose(1, 2).slice(1, r0, r1), ae);
        }
        square_accumulate(tile, ne, (r1 - r0) * d_in, lam, r0 * d_in, stream);
      }
    }
  }
}

}  // namespace gdig

TORCH_LIBRARY_IMPL(gdig, CUDA, m) { m.impl("ekfac_accumulate", &gdig::ekfac_accumulate_cuda); }
