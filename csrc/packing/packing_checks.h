// Argument checks of the packing-mask ops, shared by their CPU (packing_cpu.cpp), CUDA
// (packing_cuda.cpp) and Meta (packing_meta.cpp) implementations. Error types follow
// common/checks.h. What needs the metadata's values (positive lengths, equal sums, no split
// crossing a sample) is checked where the values are on the host: the CPU kernels (prepare in
// packing_cpu.cpp) and the Python front end (procpaint/kernels/masks.py), which runs before
// the CUDA kernels; those stay memory-safe on bad metadata.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "common/checks.h"

namespace procpaint::packing {

// split_lens, split_modes, sample_lens: 1-D integer tensors.
inline void check_metadata(const char* op, const char* name, const at::Tensor& t) {
  PP_CHECK_VALUE(t.dim() == 1, op, ": ", name, " must be 1-D, got ", t.dim(), " dims");
  PP_CHECK_TYPE(!at::isFloatingType(t.scalar_type()) && t.scalar_type() != at::kBool, op, ": ", name,
                " must have an integer dtype, got ", t.scalar_type());
}

inline void check_seq_len(const char* op, int64_t seq_len) {
  PP_CHECK_VALUE(seq_len > 0 && seq_len <= std::numeric_limits<int32_t>::max(), op, ": seq_len ",
                 seq_len, " must be in [1, 2^31 - 1]");
}

// The out= buffer of attention_mask_out / attention_bias_out: contiguous (L, L) `dtype` on like's
// device.
inline void check_out(const char* op, const at::Tensor& out, const at::Tensor& like, int64_t L,
                      at::ScalarType dtype) {
  PP_CHECK_VALUE(out.sizes() == at::IntArrayRef({L, L}), op, ": out must have shape (", L, ", ", L,
                 "), got ", out.sizes());
  PP_CHECK_TYPE(out.scalar_type() == dtype, op, ": out must have dtype ", dtype, ", got ",
                out.scalar_type());
  PP_CHECK_VALUE(out.is_contiguous(), op, ": out must be contiguous");
  PP_CHECK_VALUE(out.device() == like.device(), op, ": out must be on ", like.device(), ", got ",
                 out.device());
}

// The additive bias: a float type the kernels write (0 and -inf bit patterns).
inline void check_bias_dtype(at::ScalarType dtype) {
  PP_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                "attention_bias: dtype must be a float type (float32, float64, float16 or bfloat16), got ",
                dtype);
}

inline void check_block_size(int64_t block_size) {
  PP_CHECK_VALUE(block_size > 0, "block_mask_tensors: block_size must be > 0, got ", block_size);
}

}  // namespace procpaint::packing
