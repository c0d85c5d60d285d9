// CUDA kernels of the packing-mask ops (declarations and contracts in packing_kernels.cuh).
//
// Dense mask / bias: one tiny pass computes each token's row pattern (O(L) bytes), then one
// thread block per row writes the row once: a scalar head up to 16-byte alignment, 16-byte
// vector stores for the body, a scalar tail. Block mask: per-block features, one thread per
// block pair for the class, one thread per block line for create_block_mask's ordering.
#include <cuda_runtime.h>

#include <cstdint>

#include "packing/packing_kernels.cuh"

namespace procpaint {
namespace packing_cuda {
namespace {

using packing::BlockFeat;
using packing::SplitArrays;

constexpr int kThreads = 256;

int blocks_for(int64_t n, int threads, int64_t cap = int64_t(1) << 20) {
  int64_t b = (n + threads - 1) / threads;
  return (int)(b < 1 ? 1 : (b > cap ? cap : b));
}

__global__ void token_rows_kernel(SplitArrays s, int32_t* row_lo, int32_t* row_a, int32_t* row_hi,
                                  uint8_t* key_noise) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < s.seq_len;
       t += (int64_t)gridDim.x * blockDim.x) {
    const packing::RowSpan r = packing::row_span(s, t);
    const int64_t j = packing::clamp_index(packing::upper_bound(s.split_end, s.num_splits, t), s.num_splits);
    row_lo[t] = (int32_t)r.lo;
    row_a[t] = (int32_t)r.a;
    row_hi[t] = (int32_t)r.hi;
    key_noise[t] = s.mode[j] == packing::kNoise ? 1 : 0;
  }
}

// Word types of each element width; VEC elements make one 16-byte store.
template <int BYTES> struct Word;
template <> struct Word<1> { using T = uint8_t; };
template <> struct Word<2> { using T = uint16_t; };
template <> struct Word<4> { using T = uint32_t; };
template <> struct Word<8> { using T = uint64_t; };

template <int BYTES>
__global__ void fill_mask_kernel(typename Word<BYTES>::T* out, typename Word<BYTES>::T on,
                                 typename Word<BYTES>::T off, int64_t L, const int32_t* __restrict__ row_lo,
                                 const int32_t* __restrict__ row_a, const int32_t* __restrict__ row_hi,
                                 const uint8_t* __restrict__ key_noise) {
  using T = typename Word<BYTES>::T;
  constexpr int VEC = 16 / BYTES;
  for (int64_t q = blockIdx.x; q < L; q += gridDim.x) {
    const int64_t lo = row_lo[q], a = row_a[q], hi = row_hi[q];
    auto value = [&](int64_t k) -> T {
      // noise flags only matter in [lo, a): the sample's splits before the query's own
      return (k >= lo && k < hi && (k >= a || !key_noise[k])) ? on : off;
    };
    T* row = out + q * L;
    const int64_t mis = (int64_t)(reinterpret_cast<uintptr_t>(row) & 15) / BYTES;
    const int64_t head = mis == 0 ? 0 : (VEC - mis < L ? VEC - mis : L);
    const int64_t nvec = (L - head) / VEC;
    for (int64_t k = threadIdx.x; k < head; k += blockDim.x) row[k] = value(k);
    uint4* body = reinterpret_cast<uint4*>(row + head);
    for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
      union { uint4 u; T e[VEC]; } pack;
      const int64_t k0 = head + v * VEC;
#pragma unroll
      for (int i = 0; i < VEC; ++i) pack.e[i] = value(k0 + i);
      body[v] = pack.u;
    }
    for (int64_t k = head + nvec * VEC + threadIdx.x; k < L; k += blockDim.x) row[k] = value(k);
  }
}

__global__ void block_feat_kernel(SplitArrays s, int64_t bs, int64_t nb, BlockFeat* feat) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < nb) feat[i] = packing::block_feat(s, i, bs);
}

__global__ void block_class_kernel(const BlockFeat* __restrict__ feat, int64_t bs, int64_t nb, int8_t* cls) {
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < nb * nb;
       p += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = p / nb, c = p - r * nb;
    cls[p] = packing::block_class(feat[r], feat[c], r, c, bs);
  }
}

struct OrderOut { int32_t* p[8]; };

__global__ void block_order_kernel(const int8_t* __restrict__ cls, int64_t nb, OrderOut o) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= nb) return;
  const int8_t* row = cls + i * nb;  // kv side: row i
  packing::order_line(row, 1, nb, packing::kPartial, o.p[0] + i, o.p[1] + i * nb);
  packing::order_line(row, 1, nb, packing::kFullBlock, o.p[2] + i, o.p[3] + i * nb);
  const int8_t* col = cls + i;       // q side: column i
  packing::order_line(col, nb, nb, packing::kPartial, o.p[4] + i, o.p[5] + i * nb);
  packing::order_line(col, nb, nb, packing::kFullBlock, o.p[6] + i, o.p[7] + i * nb);
}

size_t feat_bytes(int64_t nb) { return ((size_t)nb * sizeof(BlockFeat) + 255) / 256 * 256; }

}  // namespace

void launch_token_rows(const SplitArrays& s, int32_t* row_lo, int32_t* row_a, int32_t* row_hi,
                       uint8_t* key_noise, cudaStream_t stream) {
  token_rows_kernel<<<blocks_for(s.seq_len, kThreads), kThreads, 0, stream>>>(s, row_lo, row_a, row_hi,
                                                                               key_noise);
}

void launch_fill_mask(void* out, int elem_bytes, uint64_t on_bits, uint64_t off_bits, int64_t L,
                      const int32_t* row_lo, const int32_t* row_a, const int32_t* row_hi,
                      const uint8_t* key_noise, cudaStream_t stream) {
  const int grid = (int)(L < (int64_t(1) << 20) ? L : (int64_t(1) << 20));  // one block per row
  switch (elem_bytes) {
    case 1:
      fill_mask_kernel<1><<<grid, kThreads, 0, stream>>>((uint8_t*)out, (uint8_t)on_bits, (uint8_t)off_bits,
                                                         L, row_lo, row_a, row_hi, key_noise);
      break;
    case 2:
      fill_mask_kernel<2><<<grid, kThreads, 0, stream>>>((uint16_t*)out, (uint16_t)on_bits,
                                                         (uint16_t)off_bits, L, row_lo, row_a, row_hi,
                                                         key_noise);
      break;
    case 4:
      fill_mask_kernel<4><<<grid, kThreads, 0, stream>>>((uint32_t*)out, (uint32_t)on_bits,
                                                         (uint32_t)off_bits, L, row_lo, row_a, row_hi,
                                                         key_noise);
      break;
    default:
      fill_mask_kernel<8><<<grid, kThreads, 0, stream>>>((uint64_t*)out, on_bits, off_bits, L, row_lo, row_a,
                                                         row_hi, key_noise);
      break;
  }
}

size_t block_workspace_bytes(int64_t nb) { return feat_bytes(nb) + (size_t)nb * (size_t)nb; }

void launch_block_mask(const SplitArrays& s, int64_t block_size, int64_t nb, void* workspace,
                       int32_t* const out[8], cudaStream_t stream) {
  BlockFeat* feat = static_cast<BlockFeat*>(workspace);
  int8_t* cls = static_cast<int8_t*>(workspace) + feat_bytes(nb);
  block_feat_kernel<<<blocks_for(nb, kThreads), kThreads, 0, stream>>>(s, block_size, nb, feat);
  block_class_kernel<<<blocks_for(nb * nb, kThreads), kThreads, 0, stream>>>(feat, block_size, nb, cls);
  OrderOut o;
  for (int i = 0; i < 8; ++i) o.p[i] = out[i];
  block_order_kernel<<<blocks_for(nb, 128), 128, 0, stream>>>(cls, nb, o);
}

}  // namespace packing_cuda
}  // namespace procpaint
