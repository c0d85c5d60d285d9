// Argument checks shared by every op family. Each check names the argument it rejects,
// so a bad call from Python reads e.g. "rf_mse: pred must be contiguous".
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define PP_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)
#define PP_CHECK_CONTIGUOUS(op, x) \
  TORCH_CHECK((x).is_contiguous(), op ": " #x " must be contiguous")
#define PP_CHECK_DIM(op, x, d) \
  TORCH_CHECK((x).dim() == (d), op ": " #x " must have ", d, " dims, got ", (x).dim())
#define PP_CHECK_SAME_DEVICE(op, x, y)                                                    \
  TORCH_CHECK((x).device() == (y).device(), op ": " #x " and " #y " must be on the same " \
              "device, got ", (x).device(), " and ", (y).device())
#define PP_CHECK_SAME_DTYPE(op, x, y)                                                   \
  TORCH_CHECK((x).scalar_type() == (y).scalar_type(), op ": " #x " and " #y " must have " \
              "the same dtype, got ", (x).scalar_type(), " and ", (y).scalar_type())
#define PP_CHECK_SHAPE(op, x, ...)                                                       \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), op ": " #x " must have shape (" \
              #__VA_ARGS__ "), got ", (x).sizes())
