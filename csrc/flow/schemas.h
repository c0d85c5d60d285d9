// Schemas of the rectified-flow ops (torch.ops.procpaint.*). Declared here once, included by
// csrc/ops.cpp inside the single TORCH_LIBRARY(procpaint, m) block; kernels register with
// TORCH_LIBRARY_IMPL beside their code (flow_cpu.cpp: CPU, flow_meta.cpp: Meta, flow_cuda.cpp:
// CUDA); all three run the checks of flow_checks.h.
// Autograd is registered from Python (procpaint/kernels/flow.py, torch.library.register_autograd).
//
// Conventions (docs/ARCHITECTURE.md, "Rectified flow"): t = 1 is pure noise.
//   clean, noise, pred, x, v, grad (N, D): float32 / bfloat16 / float16, one dtype per call;
//     any row stride with unit column stride is read in place, other layouts are copied.
//   t: float32, (N,) per token, or (M,) per image with index (N,) int32/int64 in [0, M).
//   reduction: "none" -> (N,) float32 mean over D; "mean" -> () mean over D then N; "sum" -> ().
//   output_mask: which gradients to compute; a masked-off gradient is returned as an empty (0,)
//     tensor (a custom-op schema cannot return None).
#pragma once
#include <torch/library.h>

namespace procpaint {

inline void define_flow_ops(torch::Library& m) {
  // z_t = t * noise + (1 - t) * clean, computed in float32, rounded once to clean's dtype.
  m.def("rf_interpolate(Tensor clean, Tensor noise, Tensor t, Tensor? index) -> Tensor");
  // (grad_clean = grad*(1-t), grad_noise = grad*t, grad_t per token = sum_D (noise-clean)*grad);
  // grad_t is (N,) float32 even with index: the caller sums it per image (O(N)).
  m.def(
      "rf_interpolate_backward(Tensor grad, Tensor clean, Tensor noise, Tensor t, Tensor? index, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // MSE of pred against target = noise - clean, recomputed on the fly; float32 result.
  m.def("rf_mse(Tensor pred, Tensor clean, Tensor noise, str reduction) -> Tensor");
  // The training forward: (rf_mse's loss, bit-equal; g (N, D) in pred's dtype) where g = d loss /
  // d pred for an upstream grad of 1 (2 (pred - target) / D per token, also / N for "mean"),
  // written in the pass that reduces the loss. The autograd of rf_mse saves g and only scales it.
  m.def("rf_mse_with_grad(Tensor pred, Tensor clean, Tensor noise, str reduction) -> (Tensor, Tensor)");
  // (grad_pred, grad_clean = grad_pred, grad_noise = -grad_pred), one fused pass that recomputes
  // the target; grad is () for "mean"/"sum" and (N,) for "none", float32. (The backward of a
  // direct rf_mse call; the public rf_mse takes rf_mse_with_grad when pred requires grad.)
  m.def(
      "rf_mse_backward(Tensor grad, Tensor pred, Tensor clean, Tensor noise, str reduction, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Euler step of the sampler: x - v * dt, dt a Python float or a float32 () / (N,) tensor.
  m.def("euler_step(Tensor x, Tensor v, float dt) -> Tensor");
  m.def("euler_step.dt_tensor(Tensor x, Tensor v, Tensor dt) -> Tensor");
  // Which build of the CPU row kernels this process runs: "avx2" or "baseline" (picked once
  // from the CPU's features; PROCPAINT_FLOW_ISA=baseline forces the baseline). For benchmarks.
  m.def("flow_cpu_isa() -> str");
}

}  // namespace procpaint
