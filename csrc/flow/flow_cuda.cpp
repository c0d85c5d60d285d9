// CUDA glue of the rectified-flow ops: argument checks (flow_checks.h, shared with the CPU ops),
// device guard, current stream, then the raw-pointer launchers of flow_kernels.cu. Compiled only
// in CUDA builds (setup.py). Semantics match flow_cpu.cpp op for op.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "flow/flow_checks.h"
#include "flow/flow_kernels.cuh"

namespace procpaint::flow {
namespace {

namespace k = procpaint::flow::cuda;

k::DType to_kernel_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return k::DType::kF32;
    case at::kBFloat16: return k::DType::kBF16;
    case at::kHalf: return k::DType::kF16;
    default: TORCH_CHECK(false, "procpaint flow: unsupported dtype ", st);  // unreachable after the checks
  }
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

// t (M,) float32 and index (N,) int32/int64, made contiguous; kept alive by the caller.
k::TimeArg time_arg(const at::Tensor& t, const c10::optional<at::Tensor>& index, at::Tensor& t_keep,
                    at::Tensor& ix_keep) {
  t_keep = t.contiguous();
  k::TimeArg ta{t_keep.data_ptr<float>(), nullptr, false, t_keep.numel()};
  if (has_index(index)) {
    ix_keep = index->contiguous();
    ta.index = ix_keep.data_ptr();
    ta.index64 = ix_keep.scalar_type() == at::kLong;
  }
  return ta;
}

at::Tensor rf_interpolate_cuda(const at::Tensor& clean_in, const at::Tensor& noise_in,
                               const at::Tensor& t, const c10::optional<at::Tensor>& index) {
  constexpr const char* op = "rf_interpolate";
  check_rf_interpolate(op, clean_in, noise_in, t, index);
  const int64_t n = clean_in.size(0), d = clean_in.size(1);
  const c10::cuda::CUDAGuard guard(clean_in.device());
  at::Tensor clean = as_rows(clean_in), noise = as_rows(noise_in), t_keep, ix_keep;
  const k::TimeArg ta = time_arg(t, index, t_keep, ix_keep);
  at::Tensor z = at::empty({n, d}, clean.options());  // (N, D)
  if (z.numel() == 0) return z;
  check_launch(op, k::launch_rf_interpolate(to_kernel_dtype(clean.scalar_type()), clean.data_ptr(),
                                            row_stride(clean), noise.data_ptr(), row_stride(noise),
                                            ta, z.data_ptr(), n, d,
                                            at::cuda::getCurrentCUDAStream()));
  return z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_interpolate_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& clean_in, const at::Tensor& noise_in,
    const at::Tensor& t, const c10::optional<at::Tensor>& index, std::array<bool, 3> mask) {
  constexpr const char* op = "rf_interpolate_backward";
  check_rf_interpolate(op, clean_in, noise_in, t, index, &grad_in);
  const int64_t n = clean_in.size(0), d = clean_in.size(1);
  const c10::cuda::CUDAGuard guard(clean_in.device());
  at::Tensor grad = as_rows(grad_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  at::Tensor t_keep, ix_keep;
  const k::TimeArg ta = time_arg(t, index, t_keep, ix_keep);
  at::Tensor gc = mask[0] ? at::empty({n, d}, clean.options()) : empty0(clean);
  at::Tensor gn = mask[1] ? at::empty({n, d}, clean.options()) : empty0(clean);
  at::Tensor gt = mask[2] ? at::empty({n}, t.options()) : empty0(t);
  if (n == 0 || !(mask[0] || mask[1] || mask[2])) return {gc, gn, gt};
  check_launch(op, k::launch_rf_interpolate_backward(
                       to_kernel_dtype(clean.scalar_type()), grad.data_ptr(), row_stride(grad),
                       clean.data_ptr(), row_stride(clean), noise.data_ptr(), row_stride(noise), ta,
                       mask[0] ? gc.data_ptr() : nullptr, mask[1] ? gn.data_ptr() : nullptr,
                       mask[2] ? gt.data_ptr<float>() : nullptr, n, d,
                       at::cuda::getCurrentCUDAStream()));
  return {gc, gn, gt};
}

// rf_mse's loss; a defined grad ((N, D) contiguous, pred's dtype) also receives the loss's
// gradient w.r.t. pred for an upstream grad of 1, from the same pass.
at::Tensor mse_forward_cuda(const char* op, Reduction red, const at::Tensor& pred_in,
                            const at::Tensor& clean_in, const at::Tensor& noise_in,
                            const at::Tensor& grad) {
  const int64_t n = pred_in.size(0), d = pred_in.size(1);
  auto f32 = pred_in.options().dtype(at::kFloat);
  at::Tensor out = red == kNone ? at::empty({n}, f32) : at::empty({}, f32);
  if (n == 0) {
    if (red != kNone) out.fill_(red == kMean ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
    return out;
  }
  at::Tensor pred = as_rows(pred_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  // O(#SMs) per-block partials: the reduced loss never needs an (N,) or (N, D) buffer.
  at::Tensor workspace = red == kNone ? at::Tensor() : at::empty({k::rf_mse_num_blocks(n, d)}, f32);
  float* ws = workspace.defined() ? workspace.data_ptr<float>() : nullptr;
  const k::DType dt = to_kernel_dtype(pred.scalar_type());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (grad.defined()) {
    check_launch(op, k::launch_rf_mse_with_grad(dt, pred.data_ptr(), row_stride(pred),
                                                clean.data_ptr(), row_stride(clean), noise.data_ptr(),
                                                row_stride(noise), n, d, static_cast<int>(red),
                                                out.data_ptr<float>(), ws, grad.data_ptr(), stream));
  } else {
    check_launch(op, k::launch_rf_mse(dt, pred.data_ptr(), row_stride(pred), clean.data_ptr(),
                                      row_stride(clean), noise.data_ptr(), row_stride(noise), n, d,
                                      static_cast<int>(red), out.data_ptr<float>(), ws, stream));
  }
  return out;
}

at::Tensor rf_mse_cuda(const at::Tensor& pred, const at::Tensor& clean, const at::Tensor& noise,
                       c10::string_view reduction) {
  constexpr const char* op = "rf_mse";
  const Reduction red = check_rf_mse(op, pred, clean, noise, reduction);
  const c10::cuda::CUDAGuard guard(pred.device());
  return mse_forward_cuda(op, red, pred, clean, noise, at::Tensor());
}

std::tuple<at::Tensor, at::Tensor> rf_mse_with_grad_cuda(const at::Tensor& pred,
                                                         const at::Tensor& clean,
                                                         const at::Tensor& noise,
                                                         c10::string_view reduction) {
  constexpr const char* op = "rf_mse_with_grad";
  const Reduction red = check_rf_mse(op, pred, clean, noise, reduction);
  const c10::cuda::CUDAGuard guard(pred.device());
  at::Tensor g = at::empty({pred.size(0), pred.size(1)}, pred.options());  // (N, D)
  at::Tensor loss = mse_forward_cuda(op, red, pred, clean, noise, g.numel() ? g : at::Tensor());
  return {loss, g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_mse_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& pred_in, const at::Tensor& clean_in,
    const at::Tensor& noise_in, c10::string_view reduction, std::array<bool, 3> mask) {
  constexpr const char* op = "rf_mse_backward";
  const Reduction red = check_rf_mse(op, pred_in, clean_in, noise_in, reduction, &grad_in);
  const int64_t n = pred_in.size(0), d = pred_in.size(1);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  at::Tensor pred = as_rows(pred_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  auto mk = [&](bool on) { return on ? at::empty({n, d}, pred.options()) : empty0(pred); };
  at::Tensor gp = mk(mask[0]), gc = mk(mask[1]), gn = mk(mask[2]);
  if (n == 0 || d == 0 || !(mask[0] || mask[1] || mask[2])) return {gp, gc, gn};
  at::Tensor g = grad_in.contiguous();
  const float base = 2.0f / static_cast<float>(d) / (red == kMean ? static_cast<float>(n) : 1.0f);
  check_launch(op, k::launch_rf_mse_backward(
                       to_kernel_dtype(pred.scalar_type()), g.data_ptr<float>(), red == kNone ? 1 : 0,
                       base, pred.data_ptr(), row_stride(pred), clean.data_ptr(), row_stride(clean),
                       noise.data_ptr(), row_stride(noise), mask[0] ? gp.data_ptr() : nullptr,
                       mask[1] ? gc.data_ptr() : nullptr, mask[2] ? gn.data_ptr() : nullptr, n, d,
                       at::cuda::getCurrentCUDAStream()));
  return {gp, gc, gn};
}

at::Tensor euler_impl_cuda(const at::Tensor& x_in, const at::Tensor& v_in, double dt,
                           const at::Tensor* dt_t) {
  constexpr const char* op = "euler_step";
  check_euler(op, x_in, v_in, dt_t);
  const int64_t n = x_in.size(0);
  at::Tensor dtc = dt_t != nullptr ? dt_t->contiguous() : at::Tensor();
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = at::empty_like(x_in, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  at::Tensor x = x_in.contiguous(), v = v_in.contiguous();
  check_launch(op, k::launch_euler_step(to_kernel_dtype(x.scalar_type()), x.data_ptr(), v.data_ptr(),
                                        dtc.defined() ? dtc.data_ptr<float>() : nullptr,
                                        dtc.defined() && dtc.dim() == 1 ? 1 : 0,
                                        static_cast<float>(dt), out.data_ptr(), n, x.numel() / n,
                                        at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor euler_step_cuda(const at::Tensor& x, const at::Tensor& v, double dt) {
  return euler_impl_cuda(x, v, dt, nullptr);
}
at::Tensor euler_step_tensor_cuda(const at::Tensor& x, const at::Tensor& v, const at::Tensor& dt) {
  return euler_impl_cuda(x, v, 0.0, &dt);
}

}  // namespace
}  // namespace procpaint::flow

TORCH_LIBRARY_IMPL(procpaint, CUDA, m) {
  using namespace procpaint::flow;
  m.impl("rf_interpolate", &rf_interpolate_cuda);
  m.impl("rf_interpolate_backward", &rf_interpolate_backward_cuda);
  m.impl("rf_mse", &rf_mse_cuda);
  m.impl("rf_mse_with_grad", &rf_mse_with_grad_cuda);
  m.impl("rf_mse_backward", &rf_mse_backward_cuda);
  m.impl("euler_step", &euler_step_cuda);
  m.impl("euler_step.dt_tensor", &euler_step_tensor_cuda);
}
