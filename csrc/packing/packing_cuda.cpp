// Torch-facing CUDA glue of the packing-mask ops: argument checks, device guard, the O(S)
// split prefix arrays (ATen cumsums on the device, no host sync), outputs and workspaces, and
// the CUDA registrations. Kernels: packing_kernels.cu. Built only in CUDA builds.
//
// Value checks (positive lengths, equal sums, no split crossing a sample) would need a device
// -> host copy; the Python front end (procpaint/kernels/masks.py) performs them on the host
// before calling. The kernels stay memory-safe on bad metadata: every lookup is clamped and
// every write is bounded by seq_len.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "common/checks.h"
#include "packing/packing_checks.h"
#include "packing/packing_kernels.cuh"

namespace procpaint {
namespace {

struct DeviceSplits {
  at::Tensor split_end, split_len, mode, sample_end, nn_end, noise_incl;
  packing::SplitArrays view(int64_t seq_len) const {
    return packing::SplitArrays{split_end.data_ptr<int64_t>(), split_len.data_ptr<int64_t>(),
                                mode.data_ptr<int64_t>(), sample_end.data_ptr<int64_t>(),
                                nn_end.data_ptr<int64_t>(), noise_incl.data_ptr<int64_t>(),
                                split_len.numel(), sample_end.numel(), seq_len};
  }
};

void check_index_tensor(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  packing::check_metadata(op, name, t);
  PP_CHECK_VALUE(t.numel() > 0, op, ": ", name, " is empty");
  PP_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ",
                 t.device());
}

DeviceSplits prepare(const at::Tensor& split_lens, const at::Tensor& split_modes,
                     const at::Tensor& sample_lens, int64_t seq_len, const char* op) {
  PP_CHECK_VALUE(split_lens.is_cuda(), op, ": split_lens must be a CUDA tensor");
  check_index_tensor(split_lens, split_lens, op, "split_lens");
  check_index_tensor(split_modes, split_lens, op, "split_modes");
  check_index_tensor(sample_lens, split_lens, op, "sample_lens");
  PP_CHECK_VALUE(split_modes.numel() == split_lens.numel(), op, ": split_modes has ",
                 split_modes.numel(), " entries for ", split_lens.numel(), " splits");
  packing::check_seq_len(op, seq_len);
  DeviceSplits d;
  d.split_len = split_lens.to(at::kLong).contiguous();
  d.mode = split_modes.to(at::kLong).contiguous();
  d.split_end = at::cumsum(d.split_len, 0);
  d.sample_end = at::cumsum(sample_lens.to(at::kLong), 0);
  const at::Tensor noise = d.mode.eq(packing::kNoise);
  d.nn_end = at::cumsum(d.split_len * noise.logical_not(), 0, at::kLong);
  d.noise_incl = at::cumsum(noise, 0, at::kLong);
  return d;
}

// Row pattern + fill: shared by the bool mask and every width of the additive bias.
void fill(at::Tensor& out, const DeviceSplits& d, int64_t L, uint64_t on, uint64_t off) {
  const packing::SplitArrays s = d.view(L);
  at::Tensor rows = at::empty({3, L}, out.options().dtype(at::kInt));  // lo, a, hi per token
  at::Tensor key_noise = at::empty({L}, out.options().dtype(at::kByte));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  int32_t* r = rows.data_ptr<int32_t>();
  packing_cuda::launch_token_rows(s, r, r + L, r + 2 * L, key_noise.data_ptr<uint8_t>(), stream);
  packing_cuda::launch_fill_mask(out.data_ptr(), (int)out.element_size(), on, off, L, r, r + L, r + 2 * L,
                                 key_noise.data_ptr<uint8_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

uint64_t neg_inf_bits(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return 0xFF800000ull;
    case at::kDouble: return 0xFFF0000000000000ull;
    case at::kHalf: return 0xFC00ull;
    case at::kBFloat16: return 0xFF80ull;
    default: TORCH_CHECK(false, "attention_bias: unsupported dtype ", dtype);  // unreachable after the checks
  }
  return 0;
}

void attention_mask_out_cuda(const at::Tensor& split_lens, const at::Tensor& split_modes,
                             const at::Tensor& sample_lens, c10::SymInt seq_len, at::Tensor& out) {
  const int64_t L = seq_len.expect_int();
  const c10::cuda::CUDAGuard guard(split_lens.device());
  packing::check_out("attention_mask", out, split_lens, L, at::kBool);
  const DeviceSplits d = prepare(split_lens, split_modes, sample_lens, L, "attention_mask");
  fill(out, d, L, 1, 0);
}

at::Tensor attention_mask_cuda(const at::Tensor& split_lens, const at::Tensor& split_modes,
                               const at::Tensor& sample_lens, c10::SymInt seq_len) {
  const int64_t L = seq_len.expect_int();
  at::Tensor out = at::empty({L, L}, split_lens.options().dtype(at::kBool));
  attention_mask_out_cuda(split_lens, split_modes, sample_lens, seq_len, out);
  return out;
}

void attention_bias_out_cuda(const at::Tensor& split_lens, const at::Tensor& split_modes,
                             const at::Tensor& sample_lens, c10::SymInt seq_len, at::ScalarType dtype,
                             at::Tensor& out) {
  const int64_t L = seq_len.expect_int();
  const c10::cuda::CUDAGuard guard(split_lens.device());
  packing::check_bias_dtype(dtype);
  const uint64_t off = neg_inf_bits(dtype);
  packing::check_out("attention_bias", out, split_lens, L, dtype);
  const DeviceSplits d = prepare(split_lens, split_modes, sample_lens, L, "attention_bias");
  fill(out, d, L, 0, off);
}

at::Tensor attention_bias_cuda(const at::Tensor& split_lens, const at::Tensor& split_modes,
                               const at::Tensor& sample_lens, c10::SymInt seq_len, at::ScalarType dtype) {
  const int64_t L = seq_len.expect_int();
  packing::check_bias_dtype(dtype);  // before allocating
  at::Tensor out = at::empty({L, L}, split_lens.options().dtype(dtype));
  attention_bias_out_cuda(split_lens, split_modes, sample_lens, seq_len, dtype, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
block_mask_tensors_cuda(const at::Tensor& split_lens, const at::Tensor& split_modes,
                        const at::Tensor& sample_lens, c10::SymInt seq_len, int64_t block_size) {
  const int64_t L = seq_len.expect_int();
  packing::check_block_size(block_size);
  const c10::cuda::CUDAGuard guard(split_lens.device());
  const DeviceSplits d = prepare(split_lens, split_modes, sample_lens, L, "block_mask_tensors");
  const int64_t nb = (L + block_size - 1) / block_size;
  const at::TensorOptions opt = split_lens.options().dtype(at::kInt);
  std::vector<at::Tensor> out;
  int32_t* ptrs[8];
  for (int i = 0; i < 8; ++i) {
    out.push_back(i % 2 == 0 ? at::empty({1, 1, nb}, opt) : at::empty({1, 1, nb, nb}, opt));
    ptrs[i] = out.back().data_ptr<int32_t>();
  }
  at::Tensor workspace = at::empty({(int64_t)packing_cuda::block_workspace_bytes(nb)},
                                   split_lens.options().dtype(at::kByte));
  packing_cuda::launch_block_mask(d.view(L), block_size, nb, workspace.data_ptr(), ptrs,
                                  at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]};
}

}  // namespace

TORCH_LIBRARY_IMPL(procpaint, CUDA, m) {
  m.impl("attention_mask", &attention_mask_cuda);
  m.impl("attention_bias", &attention_bias_cuda);
  m.impl("attention_mask_out", &attention_mask_out_cuda);
  m.impl("attention_bias_out", &attention_bias_out_cuda);
  m.impl("block_mask_tensors", &block_mask_tensors_cuda);
}

}  // namespace procpaint
