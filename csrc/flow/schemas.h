// Schemas of the rectified-flow ops (torch.ops.procpaint.*). Declared here once, included by
// csrc/ops.cpp inside the single TORCH_LIBRARY(procpaint, m) block; kernels register with
// TORCH_LIBRARY_IMPL beside their code (flow_cpu.cpp, flow_cuda.cpp).
#pragma once
#include <torch/library.h>

namespace procpaint {

inline void define_flow_ops(torch::Library& m) {
  (void)m;  // filled in by the flow-ops issue
}

}  // namespace procpaint
