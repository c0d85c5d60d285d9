// CUDA launchers of the rectified-flow ops. Raw pointers, sizes and a stream only (CUDA headers,
// no torch): flow_kernels.cu compiles with a bare toolkit, flow_cuda.cpp is the torch glue.
//
// Layout: every (N, D) input is rows with a row stride `ld*` (elements) and unit column stride;
// outputs are contiguous (ld = D). Values are float32, bfloat16 or float16 (one DType per call);
// t and losses/gradients of t are float32. Launchers return the launch's cudaError_t.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace procpaint::flow::cuda {

enum class DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Per-token time t[index ? index[i] : i]; index is int64 (index64) or int32, values in
// [0, num_t) -- checked on device (an out-of-range id prints and traps, like torch's asserts).
struct TimeArg {
  const float* t;
  const void* index;  // nullptr: one t per row
  bool index64;
  int64_t num_t;
};

// z = t * noise + (1 - t) * clean, (N, D) -> out (N, D) contiguous.
cudaError_t launch_rf_interpolate(DType dt, const void* clean, int64_t ldc, const void* noise,
                                  int64_t ldn, TimeArg t, void* out, int64_t n, int64_t d,
                                  cudaStream_t stream);

// grad_clean = grad * (1 - t), grad_noise = grad * t, grad_t[i] = sum_j (noise - clean) * grad.
// Any output pointer may be nullptr (not computed). grad_t is per row (N,) float32.
cudaError_t launch_rf_interpolate_backward(DType dt, const void* grad, int64_t ldg,
                                           const void* clean, int64_t ldc, const void* noise,
                                           int64_t ldn, TimeArg t, void* grad_clean,
                                           void* grad_noise, float* grad_t, int64_t n, int64_t d,
                                           cudaStream_t stream);

// Blocks (= float32 workspace entries) rf_mse uses for a reduced loss.
int rf_mse_num_blocks(int64_t n, int64_t d);

// reduction 0 ("none"): out (N,) = mean_D (pred - (noise - clean))^2. 1 ("mean") / 2 ("sum"):
// out () = sum of rows * (1 / (N D) or 1 / D); deterministic two-stage block reduction through
// `workspace` (rf_mse_num_blocks(n, d) floats). n >= 1 (the glue handles N = 0).
cudaError_t launch_rf_mse(DType dt, const void* pred, int64_t ldp, const void* clean, int64_t ldc,
                          const void* noise, int64_t ldn, int64_t n, int64_t d, int reduction,
                          float* out, float* workspace, cudaStream_t stream);

// launch_rf_mse, and in the same pass grad_pred (N, D) contiguous = 2 (pred - target) / D (also
// / N for reduction 1): the loss's gradient w.r.t. pred for an upstream grad of 1.
cudaError_t launch_rf_mse_with_grad(DType dt, const void* pred, int64_t ldp, const void* clean,
                                    int64_t ldc, const void* noise, int64_t ldn, int64_t n,
                                    int64_t d, int reduction, float* out, float* workspace,
                                    void* grad_pred, cudaStream_t stream);

// g = base * grad[i * grad_stride] * (pred - (noise - clean)); writes g to grad_pred and
// grad_clean and -g to grad_noise (each may be nullptr). grad_stride: 0 (scalar) or 1 (rows).
cudaError_t launch_rf_mse_backward(DType dt, const float* grad, int64_t grad_stride, float base,
                                   const void* pred, int64_t ldp, const void* clean, int64_t ldc,
                                   const void* noise, int64_t ldn, void* grad_pred,
                                   void* grad_clean, void* grad_noise, int64_t n, int64_t d,
                                   cudaStream_t stream);

// out = x - v * h_i with h_i = dt ? dt[i * dt_stride] : dt_scalar; x, v, out contiguous (N, D).
cudaError_t launch_euler_step(DType dt, const void* x, const void* v, const float* dt_ptr,
                              int64_t dt_stride, float dt_scalar, void* out, int64_t n, int64_t d,
                              cudaStream_t stream);

}  // namespace procpaint::flow::cuda
