// Argument checks of every op family: one error type per kind of mistake, the same types the
// Python front ends (procpaint/kernels/*.py) raise for it.
//
//   PP_CHECK_VALUE  a wrong shape, size, device, layout or value   -> ValueError
//   PP_CHECK_TYPE   a wrong dtype                                  -> TypeError
//   PP_CHECK_INDEX  an index (data) out of range                   -> IndexError
//
// Plain TORCH_CHECK (RuntimeError) is left for what no argument can cause: a failed CUDA launch,
// a dtype branch that the checks make unreachable. Every message starts with the op and names
// the argument, e.g. "rf_mse: noise must have the dtype of pred (Float), got Half".
// Each family keeps the checks of its ops in one header (flow/flow_checks.h,
// packing/packing_checks.h) that its CPU, CUDA and Meta implementations all call, so the three
// reject the same calls with the same message. tests/test_native_checks.py holds csrc/ to this.
#pragma once
#include <c10/util/Exception.h>

#define PP_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)
#define PP_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, __VA_ARGS__)
#define PP_CHECK_INDEX(cond, ...) TORCH_CHECK_INDEX(cond, __VA_ARGS__)
