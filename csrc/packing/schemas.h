// Schemas of the packing-mask ops (torch.ops.procpaint.*). Declared here once, included by
// csrc/ops.cpp inside the single TORCH_LIBRARY(procpaint, m) block; kernels register with
// TORCH_LIBRARY_IMPL beside their code (packing_cpu.cpp: CPU, packing_meta.cpp: Meta,
// packing_cuda.cpp: CUDA); all three run the checks of packing_checks.h.
//
// split_lens / sample_lens: integer 1-D tensors on the target device; split_modes: integer codes
// 0 = causal, 1 = full, 2 = noise (procpaint/kernels/masks.py). seq_len = sum(split_lens) = L.
//   attention_mask     -> (L, L) bool, True = may attend
//   attention_bias     -> (L, L) `dtype`, 0 = may attend, -inf = masked (SDPA / xformers form)
//   *_out              -> the same written into a caller's contiguous (L, L) buffer: a training
//                         loop that reuses it skips the page faults of a fresh L*L allocation,
//                         which cost several times the fill itself on CPU
//   block_mask_tensors -> the eight int32 tensors of a FlexAttention BlockMask with
//                         nb = ceil(L / block_size): kv_num_blocks (1, 1, nb),
//                         kv_indices (1, 1, nb, nb), full_kv_num_blocks, full_kv_indices,
//                         q_num_blocks, q_indices, full_q_num_blocks, full_q_indices (same shapes),
//                         identical to what create_block_mask produces for the same rule.
#pragma once
#include <torch/library.h>

namespace procpaint {

inline void define_packing_ops(torch::Library& m) {
  m.def("attention_mask(Tensor split_lens, Tensor split_modes, Tensor sample_lens, SymInt seq_len) -> Tensor");
  m.def("attention_bias(Tensor split_lens, Tensor split_modes, Tensor sample_lens, SymInt seq_len, "
        "ScalarType dtype) -> Tensor");
  // In-place forms return nothing: custom ops may not return an alias of an input.
  m.def("attention_mask_out(Tensor split_lens, Tensor split_modes, Tensor sample_lens, SymInt seq_len, "
        "Tensor(a!) out) -> ()");
  m.def("attention_bias_out(Tensor split_lens, Tensor split_modes, Tensor sample_lens, SymInt seq_len, "
        "ScalarType dtype, Tensor(a!) out) -> ()");
  m.def("block_mask_tensors(Tensor split_lens, Tensor split_modes, Tensor sample_lens, SymInt seq_len, "
        "int block_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace procpaint
