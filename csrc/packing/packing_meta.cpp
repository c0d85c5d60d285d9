// Meta (shape-only, symbolic in seq_len) implementations of the packing-mask ops (schemas:
// csrc/packing/schemas.h), used by torch.compile / FakeTensor tracing. They run the checks that
// need no values (packing_checks.h), the same calls as the CPU and CUDA kernels, so such a bad
// call fails at trace time with the same error.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "packing/packing_checks.h"

namespace procpaint {
namespace {

void check_metadata(const char* op, const at::Tensor& split_lens, const at::Tensor& split_modes,
                    const at::Tensor& sample_lens) {
  packing::check_metadata(op, "split_lens", split_lens);
  packing::check_metadata(op, "split_modes", split_modes);
  packing::check_metadata(op, "sample_lens", sample_lens);
}

at::Tensor attention_mask_meta(const at::Tensor& split_lens, const at::Tensor& split_modes,
                               const at::Tensor& sample_lens, c10::SymInt seq_len) {
  check_metadata("attention_mask", split_lens, split_modes, sample_lens);
  return at::empty_symint({seq_len, seq_len}, split_lens.options().dtype(at::kBool));
}

at::Tensor attention_bias_meta(const at::Tensor& split_lens, const at::Tensor& split_modes,
                               const at::Tensor& sample_lens, c10::SymInt seq_len, at::ScalarType dtype) {
  packing::check_bias_dtype(dtype);
  check_metadata("attention_bias", split_lens, split_modes, sample_lens);
  return at::empty_symint({seq_len, seq_len}, split_lens.options().dtype(dtype));
}

void attention_mask_out_meta(const at::Tensor& split_lens, const at::Tensor& split_modes,
                             const at::Tensor& sample_lens, c10::SymInt, at::Tensor&) {
  check_metadata("attention_mask", split_lens, split_modes, sample_lens);
}

void attention_bias_out_meta(const at::Tensor& split_lens, const at::Tensor& split_modes,
                             const at::Tensor& sample_lens, c10::SymInt, at::ScalarType dtype,
                             at::Tensor&) {
  packing::check_bias_dtype(dtype);
  check_metadata("attention_bias", split_lens, split_modes, sample_lens);
}

using BlockTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor, at::Tensor, at::Tensor>;

BlockTensors block_mask_tensors_meta(const at::Tensor& split_lens, const at::Tensor& split_modes,
                                     const at::Tensor& sample_lens, c10::SymInt seq_len,
                                     int64_t block_size) {
  packing::check_block_size(block_size);
  check_metadata("block_mask_tensors", split_lens, split_modes, sample_lens);
  const c10::SymInt nb = (seq_len + block_size - 1) / block_size;
  const at::TensorOptions opt = split_lens.options().dtype(at::kInt);
  std::vector<at::Tensor> o;
  for (int i = 0; i < 4; ++i) {
    o.push_back(at::empty_symint({1, 1, nb}, opt));      // *_num_blocks
    o.push_back(at::empty_symint({1, 1, nb, nb}, opt));  // *_indices
  }
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]};
}

}  // namespace

TORCH_LIBRARY_IMPL(procpaint, Meta, m) {
  m.impl("attention_mask", &attention_mask_meta);
  m.impl("attention_bias", &attention_bias_meta);
  m.impl("attention_mask_out", &attention_mask_out_meta);
  m.impl("attention_bias_out", &attention_bias_out_meta);
  m.impl("block_mask_tensors", &block_mask_tensors_meta);
}

}  // namespace procpaint
