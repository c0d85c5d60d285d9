// CPU (OpenMP) kernels of the packing-mask ops declared in schemas.h (Meta: packing_meta.cpp).
//
// attention_mask / attention_bias write each output row exactly once, as a handful of constant
// runs (the row pattern of packing_rule.h), with no L*L temporaries. block_mask_tensors
// classifies the nb*nb block pairs from split metadata in O(nb^2 + S log S) and orders them the
// way create_block_mask does (active blocks ascending, then the rest ascending).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "packing/packing_checks.h"
#include "packing/packing_rule.h"

namespace procpaint {
namespace {

using packing::BlockFeat;
using packing::SplitArrays;

// Below these sizes a parallel region costs more than the work (and hurts a loaded machine).
constexpr int64_t kParallelBytes = int64_t(1) << 20;  // dense elements
constexpr int64_t kParallelBlocks = int64_t(1) << 14;  // block pairs

// Host copies of the split metadata plus the prefix arrays SplitArrays points into.
struct HostSplits {
  std::vector<int64_t> split_end, split_len, mode, sample_end, nn_end, noise_incl;
  SplitArrays view() const {
    return SplitArrays{split_end.data(), split_len.data(), mode.data(), sample_end.data(),
                       nn_end.data(), noise_incl.data(), (int64_t)split_len.size(),
                       (int64_t)sample_end.size(), split_end.empty() ? 0 : split_end.back()};
  }
};

std::vector<int64_t> to_host_vector(const at::Tensor& t, const char* op, const char* name) {
  packing::check_metadata(op, name, t);
  const at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

// Validates like the Python front end (which raises first with friendlier messages) so a direct
// torch.ops call with bad metadata is a ValueError, never an out-of-bounds write.
HostSplits prepare(const at::Tensor& split_lens, const at::Tensor& split_modes,
                   const at::Tensor& sample_lens, int64_t seq_len, const char* op) {
  HostSplits h;
  h.split_len = to_host_vector(split_lens, op, "split_lens");
  h.mode = to_host_vector(split_modes, op, "split_modes");
  std::vector<int64_t> sample_len = to_host_vector(sample_lens, op, "sample_lens");
  const int64_t S = (int64_t)h.split_len.size(), N = (int64_t)sample_len.size();
  PP_CHECK_VALUE(S > 0 && N > 0, op, ": empty packing (", S, " splits, ", N, " samples)");
  PP_CHECK_VALUE((int64_t)h.mode.size() == S, op, ": split_modes has ", h.mode.size(),
                 " entries for ", S, " splits");
  packing::check_seq_len(op, seq_len);
  h.split_end.resize(S);
  h.nn_end.resize(S);
  h.noise_incl.resize(S);
  h.sample_end.resize(N);
  int64_t acc = 0;
  for (int64_t n = 0; n < N; ++n) {
    PP_CHECK_VALUE(sample_len[n] > 0, op, ": sample_lens[", n, "] = ", sample_len[n], " must be > 0");
    acc += sample_len[n];
    PP_CHECK_VALUE(acc <= seq_len, op, ": sum(sample_lens) exceeds seq_len ", seq_len);
    h.sample_end[n] = acc;
  }
  PP_CHECK_VALUE(acc == seq_len, op, ": sum(sample_lens) = ", acc, " != seq_len ", seq_len);
  int64_t end = 0, nn = 0, noise = 0, sample = 0;
  for (int64_t j = 0; j < S; ++j) {
    PP_CHECK_VALUE(h.split_len[j] > 0, op, ": split_lens[", j, "] = ", h.split_len[j], " must be > 0");
    PP_CHECK_VALUE(h.mode[j] >= 0 && h.mode[j] <= 2, op, ": split_modes[", j, "] = ", h.mode[j],
                   " is not 0 (causal), 1 (full) or 2 (noise)");
    end += h.split_len[j];
    PP_CHECK_VALUE(end <= seq_len, op, ": sum(split_lens) exceeds seq_len ", seq_len);
    PP_CHECK_VALUE(end <= h.sample_end[sample], op, ": split ", j, " ends at ", end,
                   " and crosses the sample boundary at ", h.sample_end[sample]);
    if (end == h.sample_end[sample]) ++sample;
    nn += h.mode[j] == packing::kNoise ? 0 : h.split_len[j];
    noise += h.mode[j] == packing::kNoise ? 1 : 0;
    h.split_end[j] = end;
    h.nn_end[j] = nn;
    h.noise_incl[j] = noise;
  }
  PP_CHECK_VALUE(end == seq_len, op, ": sum(split_lens) = ", end, " != seq_len ", seq_len);
  return h;
}

// Writes the (L, L) pattern with element bits `on` (may attend) / `off` (masked). Rows are
// independent, so OpenMP splits them statically; each row is a few std::fill runs.
template <typename T>
void fill_rows(T* out, const HostSplits& h, T on, T off) {
  const SplitArrays s = h.view();
  const int64_t L = s.seq_len;
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (L * L >= kParallelBytes)
  for (int64_t q = 0; q < L; ++q) {
    T* row = out + q * L;
    const packing::RowSpan r = packing::row_span(s, q);
    std::fill(row, row + r.lo, off);
    int64_t pos = r.lo;
    for (int64_t t = packing::upper_bound(s.split_end, s.num_splits, r.lo); pos < r.a; ++t) {
      const int64_t stop = s.split_end[t];  // splits before the own one are whole
      std::fill(row + pos, row + stop, s.mode[t] == packing::kNoise ? off : on);
      pos = stop;
    }
    std::fill(row + r.a, row + r.hi, on);
    std::fill(row + r.hi, row + L, off);
  }
}

// 0 / -inf as raw bit patterns: one integer fill routine serves every float width.
void fill_bias(at::Tensor& out, const HostSplits& h) {
  switch (out.scalar_type()) {
    case at::kFloat: fill_rows<uint32_t>((uint32_t*)out.data_ptr(), h, 0u, 0xFF800000u); break;
    case at::kDouble:
      fill_rows<uint64_t>((uint64_t*)out.data_ptr(), h, 0ull, 0xFFF0000000000000ull);
      break;
    case at::kHalf: fill_rows<uint16_t>((uint16_t*)out.data_ptr(), h, 0, 0xFC00); break;
    case at::kBFloat16: fill_rows<uint16_t>((uint16_t*)out.data_ptr(), h, 0, 0xFF80); break;
    default:  // unreachable after the checks
      TORCH_CHECK(false, "attention_bias: unsupported dtype ", out.scalar_type());
  }
}

void attention_mask_out_cpu(const at::Tensor& split_lens, const at::Tensor& split_modes,
                            const at::Tensor& sample_lens, c10::SymInt seq_len, at::Tensor& out) {
  const int64_t L = seq_len.expect_int();
  packing::check_out("attention_mask", out, split_lens, L, at::kBool);
  const HostSplits h = prepare(split_lens, split_modes, sample_lens, L, "attention_mask");
  fill_rows<uint8_t>(reinterpret_cast<uint8_t*>(out.data_ptr<bool>()), h, 1, 0);
}

at::Tensor attention_mask_cpu(const at::Tensor& split_lens, const at::Tensor& split_modes,
                              const at::Tensor& sample_lens, c10::SymInt seq_len) {
  const int64_t L = seq_len.expect_int();
  at::Tensor out = at::empty({L, L}, split_lens.options().dtype(at::kBool));
  attention_mask_out_cpu(split_lens, split_modes, sample_lens, seq_len, out);
  return out;
}

void attention_bias_out_cpu(const at::Tensor& split_lens, const at::Tensor& split_modes,
                            const at::Tensor& sample_lens, c10::SymInt seq_len, at::ScalarType dtype,
                            at::Tensor& out) {
  const int64_t L = seq_len.expect_int();
  packing::check_bias_dtype(dtype);
  packing::check_out("attention_bias", out, split_lens, L, dtype);
  const HostSplits h = prepare(split_lens, split_modes, sample_lens, L, "attention_bias");
  fill_bias(out, h);
}

at::Tensor attention_bias_cpu(const at::Tensor& split_lens, const at::Tensor& split_modes,
                              const at::Tensor& sample_lens, c10::SymInt seq_len, at::ScalarType dtype) {
  const int64_t L = seq_len.expect_int();
  packing::check_bias_dtype(dtype);
  at::Tensor out = at::empty({L, L}, split_lens.options().dtype(dtype));
  attention_bias_out_cpu(split_lens, split_modes, sample_lens, seq_len, dtype, out);
  return out;
}

std::vector<at::Tensor> empty_block_outputs(int64_t nb, const at::TensorOptions& opt) {
  std::vector<at::Tensor> out;
  for (int i = 0; i < 4; ++i) {
    out.push_back(at::empty({1, 1, nb}, opt));      // *_num_blocks
    out.push_back(at::empty({1, 1, nb, nb}, opt));  // *_indices
  }
  return out;
}

using BlockTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor, at::Tensor, at::Tensor>;

BlockTensors as_tuple(const std::vector<at::Tensor>& o) {
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]};
}

BlockTensors block_mask_tensors_cpu(const at::Tensor& split_lens, const at::Tensor& split_modes,
                                    const at::Tensor& sample_lens, c10::SymInt seq_len, int64_t block_size) {
  const int64_t L = seq_len.expect_int();
  packing::check_block_size(block_size);
  const HostSplits h = prepare(split_lens, split_modes, sample_lens, L, "block_mask_tensors");
  const SplitArrays s = h.view();
  const int64_t nb = (L + block_size - 1) / block_size;
  std::vector<BlockFeat> feat(nb);
  std::vector<int8_t> cls(nb * nb);  // (q block, kv block) classes, nb^2 bytes
  const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads) if (nb * nb >= kParallelBlocks)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nb; ++i) feat[i] = packing::block_feat(s, i, block_size);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t c = 0; c < nb; ++c)
        cls[r * nb + c] = packing::block_class(feat[r], feat[c], r, c, block_size);
  }
  std::vector<at::Tensor> out = empty_block_outputs(nb, split_lens.options().dtype(at::kInt));
  int32_t* p[8];
  for (int i = 0; i < 8; ++i) p[i] = out[i].data_ptr<int32_t>();
#pragma omp parallel for schedule(static) num_threads(threads) if (nb * nb >= kParallelBlocks)
  for (int64_t i = 0; i < nb; ++i) {
    const int8_t* row = cls.data() + i * nb;  // kv side: row i of the class matrix
    packing::order_line(row, 1, nb, packing::kPartial, p[0] + i, p[1] + i * nb);
    packing::order_line(row, 1, nb, packing::kFullBlock, p[2] + i, p[3] + i * nb);
    const int8_t* col = cls.data() + i;  // q side: column i (the transposed mask)
    packing::order_line(col, nb, nb, packing::kPartial, p[4] + i, p[5] + i * nb);
    packing::order_line(col, nb, nb, packing::kFullBlock, p[6] + i, p[7] + i * nb);
  }
  return as_tuple(out);
}

}  // namespace

TORCH_LIBRARY_IMPL(procpaint, CPU, m) {
  m.impl("attention_mask", &attention_mask_cpu);
  m.impl("attention_bias", &attention_bias_cpu);
  m.impl("attention_mask_out", &attention_mask_out_cpu);
  m.impl("attention_bias_out", &attention_bias_out_cpu);
  m.impl("block_mask_tensors", &block_mask_tensors_cpu);
}

}  // namespace procpaint
