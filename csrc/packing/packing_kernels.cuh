// CUDA launchers of the packing-mask ops on raw device pointers (CUDA headers only; the torch
// glue that allocates, checks and picks the stream is packing_cuda.cpp). The rule and the block
// classification come from packing_rule.h, shared with the CPU kernels.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "packing/packing_rule.h"

namespace procpaint {
namespace packing_cuda {

// Per-token row pattern: row_lo / row_a / row_hi (int32, (L,)) of packing::RowSpan for query t,
// key_noise (uint8, (L,)) = 1 where token t lies in a noise split.
void launch_token_rows(const packing::SplitArrays& s, int32_t* row_lo, int32_t* row_a, int32_t* row_hi,
                       uint8_t* key_noise, cudaStream_t stream);

// Fills the (L, L) output of `elem_bytes`-wide elements (1, 2, 4 or 8) with the bit patterns
// `on_bits` (may attend) / `off_bits` (masked), each row written once with 16-byte stores.
void launch_fill_mask(void* out, int elem_bytes, uint64_t on_bits, uint64_t off_bits, int64_t seq_len,
                      const int32_t* row_lo, const int32_t* row_a, const int32_t* row_hi,
                      const uint8_t* key_noise, cudaStream_t stream);

// Scratch bytes launch_block_mask needs for nb blocks (features + the nb*nb class matrix).
size_t block_workspace_bytes(int64_t nb);

// Classifies the nb*nb block pairs and writes the eight BlockMask tensors, in the order
// kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, q_num_blocks, q_indices,
// full_q_num_blocks, full_q_indices (int32; *_num_blocks (nb,), *_indices (nb, nb)).
void launch_block_mask(const packing::SplitArrays& s, int64_t block_size, int64_t nb, void* workspace,
                       int32_t* const out[8], cudaStream_t stream);

}  // namespace packing_cuda
}  // namespace procpaint
