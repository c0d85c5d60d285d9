// Meta (shape-only) implementations of the rectified-flow ops (schemas: csrc/flow/schemas.h),
// used by torch.compile / FakeTensor tracing. Each calls the same check_<op> function as the CPU
// and CUDA kernels (flow_checks.h), so a bad call fails at trace time with the same error. (The
// index range check reads data and runs in the kernels only.)
#include <ATen/ATen.h>
#include <torch/library.h>

#include "flow/flow_checks.h"

namespace procpaint::flow {
namespace {

at::Tensor rf_interpolate_meta(const at::Tensor& clean, const at::Tensor& noise, const at::Tensor& t,
                               const c10::optional<at::Tensor>& index) {
  check_rf_interpolate("rf_interpolate", clean, noise, t, index);
  return at::empty_like(clean, at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_interpolate_backward_meta(
    const at::Tensor& grad, const at::Tensor& clean, const at::Tensor& noise, const at::Tensor& t,
    const c10::optional<at::Tensor>& index, std::array<bool, 3> mask) {
  check_rf_interpolate("rf_interpolate_backward", clean, noise, t, index, &grad);
  auto full = [&] { return at::empty_like(clean, at::MemoryFormat::Contiguous); };
  return {mask[0] ? full() : empty0(clean), mask[1] ? full() : empty0(clean),
          mask[2] ? at::empty({clean.size(0)}, t.options()) : empty0(t)};
}

at::Tensor rf_mse_meta(const at::Tensor& pred, const at::Tensor& clean, const at::Tensor& noise,
                       c10::string_view reduction) {
  const Reduction red = check_rf_mse("rf_mse", pred, clean, noise, reduction);
  auto f32 = pred.options().dtype(at::kFloat);
  return red == kNone ? at::empty({pred.size(0)}, f32) : at::empty({}, f32);
}

std::tuple<at::Tensor, at::Tensor> rf_mse_with_grad_meta(const at::Tensor& pred,
                                                         const at::Tensor& clean,
                                                         const at::Tensor& noise,
                                                         c10::string_view reduction) {
  const Reduction red = check_rf_mse("rf_mse_with_grad", pred, clean, noise, reduction);
  auto f32 = pred.options().dtype(at::kFloat);
  return {red == kNone ? at::empty({pred.size(0)}, f32) : at::empty({}, f32),
          at::empty_like(pred, at::MemoryFormat::Contiguous)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_mse_backward_meta(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& clean, const at::Tensor& noise,
    c10::string_view reduction, std::array<bool, 3> mask) {
  check_rf_mse("rf_mse_backward", pred, clean, noise, reduction, &grad);
  auto mk = [&](bool on) {
    return on ? at::empty_like(pred, at::MemoryFormat::Contiguous) : empty0(pred);
  };
  return {mk(mask[0]), mk(mask[1]), mk(mask[2])};
}

at::Tensor euler_step_meta(const at::Tensor& x, const at::Tensor& v, double dt) {
  check_euler("euler_step", x, v, nullptr);
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}
at::Tensor euler_step_tensor_meta(const at::Tensor& x, const at::Tensor& v, const at::Tensor& dt) {
  check_euler("euler_step", x, v, &dt);
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

}  // namespace
}  // namespace procpaint::flow

TORCH_LIBRARY_IMPL(procpaint, Meta, m) {
  using namespace procpaint::flow;
  m.impl("rf_interpolate", &rf_interpolate_meta);
  m.impl("rf_interpolate_backward", &rf_interpolate_backward_meta);
  m.impl("rf_mse", &rf_mse_meta);
  m.impl("rf_mse_with_grad", &rf_mse_with_grad_meta);
  m.impl("rf_mse_backward", &rf_mse_backward_meta);
  m.impl("euler_step", &euler_step_meta);
  m.impl("euler_step.dt_tensor", &euler_step_tensor_meta);
}
