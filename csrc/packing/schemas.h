// Schemas of the packing-mask ops (torch.ops.procpaint.*). Declared here once, included by
// csrc/ops.cpp inside the single TORCH_LIBRARY(procpaint, m) block; kernels register with
// TORCH_LIBRARY_IMPL beside their code (packing_cpu.cpp, packing_cuda.cpp).
//
// split_lens / sample_lens: int32 or int64 1-D tensors on the target device;
// split_modes: int8/int32 codes 0 = causal, 1 = full, 2 = noise (procpaint/kernels/packing.py).
#pragma once
#include <torch/library.h>

namespace procpaint {

inline void define_packing_ops(torch::Library& m) {
  m.def("attention_mask(Tensor split_lens, Tensor split_modes, Tensor sample_lens, SymInt seq_len) -> Tensor");
}

}  // namespace procpaint
