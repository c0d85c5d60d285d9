// Argument checks and layout helpers of the rectified-flow ops, shared by their CPU
// (flow_cpu.cpp), CUDA (flow_cuda.cpp) and Meta (flow_meta.cpp) implementations: each op calls
// its one check_<op> function below, so the three reject the same calls with the same message.
// Error types follow common/checks.h (ValueError / TypeError / IndexError by kind of mistake).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <string>
#include <string_view>

#include "common/checks.h"

namespace procpaint::flow {

enum Reduction : int { kNone = 0, kMean = 1, kSum = 2 };

inline Reduction parse_reduction(const char* op, std::string_view r) {
  if (r == "none") return kNone;
  if (r == "mean") return kMean;
  if (r == "sum") return kSum;
  PP_CHECK_VALUE(false, op, ": reduction must be 'none', 'mean' or 'sum', got '", std::string(r), "'");
}

inline bool is_kernel_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kBFloat16 || s == at::kHalf;
}

// x: (N, D) float32/bfloat16/float16.
inline void check_rows(const char* op, const char* name, const at::Tensor& x) {
  PP_CHECK_VALUE(x.defined(), op, ": ", name, " is undefined");
  PP_CHECK_VALUE(x.dim() == 2, op, ": ", name, " must have shape (N, D), got ", x.sizes());
  PP_CHECK_TYPE(is_kernel_dtype(x.scalar_type()), op, ": ", name,
                " must be float32, bfloat16 or float16, got ", x.scalar_type());
}

// y must match x (the reference argument) in shape, dtype and device.
inline void check_like(const char* op, const char* xname, const at::Tensor& x, const char* yname,
                       const at::Tensor& y) {
  check_rows(op, yname, y);
  PP_CHECK_VALUE(y.sizes() == x.sizes(), op, ": ", yname, " must have the shape of ", xname, " ",
                 x.sizes(), ", got ", y.sizes());
  PP_CHECK_TYPE(y.scalar_type() == x.scalar_type(), op, ": ", yname, " must have the dtype of ",
                xname, " (", x.scalar_type(), "), got ", y.scalar_type());
  PP_CHECK_VALUE(y.device() == x.device(), op, ": ", yname, " must be on ", xname, "'s device ",
                 x.device(), ", got ", y.device());
}

// t: float32, (N,) without index, (M,) with index (N,) int32/int64. Range of index values is
// checked by the kernels (CPU: before the pass, CUDA: device-side trap).
inline void check_t(const char* op, const at::Tensor& t, const c10::optional<at::Tensor>& index,
                    int64_t n, const at::Device& dev) {
  PP_CHECK_VALUE(t.dim() == 1, op, ": t must be 1-D, got shape ", t.sizes());
  PP_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": t must be float32, got ", t.scalar_type());
  PP_CHECK_VALUE(t.device() == dev, op, ": t must be on ", dev, ", got ", t.device());
  if (index.has_value() && index->defined()) {
    const at::Tensor& ix = *index;
    PP_CHECK_VALUE(ix.dim() == 1 && ix.size(0) == n, op, ": index must have shape (", n,
                   ",) (one image id per token), got ", ix.sizes());
    PP_CHECK_TYPE(ix.scalar_type() == at::kLong || ix.scalar_type() == at::kInt, op,
                  ": index must be int64 or int32, got ", ix.scalar_type());
    PP_CHECK_VALUE(ix.device() == dev, op, ": index must be on ", dev, ", got ", ix.device());
  } else {
    PP_CHECK_VALUE(t.size(0) == n, op, ": t must have shape (", n,
                   ",) (one timestep per token; pass index for per-image t), got ", t.sizes());
  }
}

// Kernels read rows with an arbitrary row stride but unit column stride; anything else
// (column slices with stride, transposes, expanded grads) is copied once.
inline at::Tensor as_rows(const at::Tensor& x) {
  if (x.size(1) <= 1 || x.stride(1) == 1) return x;
  return x.contiguous();
}

inline int64_t row_stride(const at::Tensor& x) {
  return x.size(0) <= 1 ? x.size(1) : x.stride(0);
}

inline bool has_index(const c10::optional<at::Tensor>& index) {
  return index.has_value() && index->defined();
}

// A masked-off output: an empty (0,) tensor (a custom-op schema cannot return None).
inline at::Tensor empty0(const at::Tensor& like) { return at::empty({0}, like.options()); }

// grad of rf_mse: float32 on pred's device, (N,) for "none", () for "mean" / "sum".
inline void check_mse_grad(const char* op, const at::Tensor& grad, const at::Tensor& pred,
                           Reduction red, std::string_view reduction) {
  const int64_t n = pred.size(0);
  PP_CHECK_TYPE(grad.scalar_type() == at::kFloat, op, ": grad must be float32, got ",
                grad.scalar_type());
  PP_CHECK_VALUE(grad.device() == pred.device(), op, ": grad must be on ", pred.device());
  if (red == kNone) {
    PP_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == n, op, ": grad must have shape (", n,
                   ",) for reduction='none', got ", grad.sizes());
  } else {
    PP_CHECK_VALUE(grad.dim() == 0, op, ": grad must be 0-d for reduction='",
                   std::string(reduction), "', got ", grad.sizes());
  }
}

// euler_step: x (N, ...) float32/bfloat16/float16, v like x; dt (if a tensor) float32 () or (N,).
inline void check_euler(const char* op, const at::Tensor& x, const at::Tensor& v,
                        const at::Tensor* dt) {
  PP_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dim, got a 0-d tensor");
  PP_CHECK_TYPE(is_kernel_dtype(x.scalar_type()), op,
                ": x must be float32, bfloat16 or float16, got ", x.scalar_type());
  PP_CHECK_VALUE(v.sizes() == x.sizes(), op, ": v must have the shape of x ", x.sizes(), ", got ",
                 v.sizes());
  PP_CHECK_TYPE(v.scalar_type() == x.scalar_type(), op, ": v must have the dtype of x (",
                x.scalar_type(), "), got ", v.scalar_type());
  PP_CHECK_VALUE(v.device() == x.device(), op, ": v must be on x's device ", x.device());
  if (dt == nullptr) return;
  PP_CHECK_TYPE(dt->scalar_type() == at::kFloat, op, ": dt must be float32, got ",
                dt->scalar_type());
  PP_CHECK_VALUE(dt->device() == x.device(), op, ": dt must be on x's device ", x.device());
  PP_CHECK_VALUE(dt->dim() == 0 || (dt->dim() == 1 && dt->size(0) == x.size(0)), op,
                 ": dt must be 0-d or have shape (", x.size(0), ",), got ", dt->sizes());
}

// ---- the whole check of each op (CPU, CUDA and Meta call these) ----

// rf_interpolate (grad == nullptr) and rf_interpolate_backward (grad given).
inline void check_rf_interpolate(const char* op, const at::Tensor& clean, const at::Tensor& noise,
                                 const at::Tensor& t, const c10::optional<at::Tensor>& index,
                                 const at::Tensor* grad = nullptr) {
  check_rows(op, "clean", clean);
  check_like(op, "clean", clean, "noise", noise);
  if (grad != nullptr) check_like(op, "clean", clean, "grad", *grad);
  check_t(op, t, index, clean.size(0), clean.device());
}

// rf_mse (grad == nullptr) and rf_mse_backward (grad given); returns the parsed reduction.
inline Reduction check_rf_mse(const char* op, const at::Tensor& pred, const at::Tensor& clean,
                              const at::Tensor& noise, std::string_view reduction,
                              const at::Tensor* grad = nullptr) {
  const Reduction red = parse_reduction(op, reduction);
  check_rows(op, "pred", pred);
  check_like(op, "pred", pred, "clean", clean);
  check_like(op, "pred", pred, "noise", noise);
  if (grad != nullptr) check_mse_grad(op, *grad, pred, red, reduction);
  return red;
}

}  // namespace procpaint::flow
