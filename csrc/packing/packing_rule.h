// The packing mask rule in a form both the CPU kernels (packing_cpu.cpp) and the CUDA kernels
// (packing_kernels.cu) compile: plain structs over raw pointers and __host__ __device__ inline
// functions, <cstdint> only (no torch, no CUDA runtime), so the two backends cannot drift.
//
// Rule (docs/ARCHITECTURE.md, "Mask semantics"; BAGEL's create_sparse_mask): query q may attend key k iff
//   same_sample(q, k) AND (k <= q OR same full-or-noise split(q, k))
//                     AND NOT (k in a noise split AND q not in that split).
// Per query q in split j = [a, b) of sample [s0, s1) this is one row pattern:
//   [s0, a): the sample's earlier splits, true where the split is not noise
//   [a, hi): its own split, hi = q + 1 (causal) or b (full, noise)
//   elsewhere false.
// Block classification (block_class) derives empty / partial / full for a (q-block, kv-block)
// pair in O(1) from per-block features, so a BlockMask never needs the L*L pairs.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PP_HD __host__ __device__ __forceinline__
#else
#define PP_HD inline
#endif

namespace procpaint {
namespace packing {

enum Mode : int32_t { kCausal = 0, kFull = 1, kNoise = 2 };
enum BlockClass : int8_t { kEmpty = 0, kPartial = 1, kFullBlock = 2 };

// Split-level prefix arrays (length S unless noted), all int64, on the kernel's device.
struct SplitArrays {
  const int64_t* split_end;   // inclusive cumsum of split_lens
  const int64_t* split_len;   // split_lens
  const int64_t* mode;        // mode code per split
  const int64_t* sample_end;  // inclusive cumsum of sample_lens (length N)
  const int64_t* nn_end;      // inclusive cumsum of split_len * (mode != noise)
  const int64_t* noise_incl;  // inclusive count of noise splits
  int64_t num_splits;
  int64_t num_samples;
  int64_t seq_len;
};

// First index i in [0, n) with arr[i] > x (n if none): the segment containing token x.
PP_HD int64_t upper_bound(const int64_t* arr, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (arr[mid] > x) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// First index i in [0, n) with arr[i] >= x (n if none).
PP_HD int64_t lower_bound(const int64_t* arr, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (arr[mid] >= x) hi = mid; else lo = mid + 1;
  }
  return lo;
}

PP_HD int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// The row pattern of query q: visible keys are [lo, hi) minus noise splits before a.
struct RowSpan {
  int64_t lo;  // sample start s0
  int64_t a;   // own split start
  int64_t hi;  // exclusive end of the visible own-split part
};

PP_HD RowSpan row_span(const SplitArrays& s, int64_t q) {
  const int64_t j = clamp_index(upper_bound(s.split_end, s.num_splits, q), s.num_splits);
  const int64_t n = clamp_index(upper_bound(s.sample_end, s.num_samples, q), s.num_samples);
  RowSpan r;
  r.lo = n > 0 ? s.sample_end[n - 1] : 0;
  r.a = s.split_end[j] - s.split_len[j];
  r.hi = s.mode[j] == kCausal ? q + 1 : s.split_end[j];
  return r;
}

// Non-noise tokens before position x (0 <= x <= L).
PP_HD int64_t nonnoise_before(const SplitArrays& s, int64_t x) {
  const int64_t j = clamp_index(lower_bound(s.split_end, s.num_splits, x), s.num_splits);
  const int64_t tail = s.split_end[j] - x;  // tokens of split j at or after x
  return s.nn_end[j] - (s.mode[j] == kNoise ? 0 : tail);
}

// What block pair classification needs to know about one block [lo, hi).
struct BlockFeat {
  int64_t lo, hi;             // token range, hi clipped to L
  int64_t sample_start;       // start of the sample containing lo
  int64_t split_start;        // start of the split containing lo
  int64_t nn_lo, nn_hi;       // non-noise tokens before lo / hi
  int64_t nn_sample_start;    // non-noise tokens before sample_start
  int64_t sp_lo, sp_last;     // splits containing lo and hi - 1
  int64_t sam_lo, sam_last;   // samples containing lo and hi - 1
  int64_t noise_split;        // the one noise split intersecting the block, -1 none, -2 several
  int64_t mode_lo;            // mode of split sp_lo
};

PP_HD BlockFeat block_feat(const SplitArrays& s, int64_t i, int64_t bs) {
  BlockFeat f;
  f.lo = i * bs;
  f.hi = f.lo + bs < s.seq_len ? f.lo + bs : s.seq_len;
  const int64_t last = f.hi - 1;
  f.sp_lo = clamp_index(upper_bound(s.split_end, s.num_splits, f.lo), s.num_splits);
  f.sp_last = clamp_index(upper_bound(s.split_end, s.num_splits, last), s.num_splits);
  f.sam_lo = clamp_index(upper_bound(s.sample_end, s.num_samples, f.lo), s.num_samples);
  f.sam_last = clamp_index(upper_bound(s.sample_end, s.num_samples, last), s.num_samples);
  f.sample_start = f.sam_lo > 0 ? s.sample_end[f.sam_lo - 1] : 0;
  f.split_start = s.split_end[f.sp_lo] - s.split_len[f.sp_lo];
  f.nn_lo = nonnoise_before(s, f.lo);
  f.nn_hi = nonnoise_before(s, f.hi);
  f.nn_sample_start = nonnoise_before(s, f.sample_start);
  f.mode_lo = s.mode[f.sp_lo];
  const int64_t before = f.sp_lo > 0 ? s.noise_incl[f.sp_lo - 1] : 0;
  const int64_t count = s.noise_incl[f.sp_last] - before;
  if (count == 0) {
    f.noise_split = -1;
  } else if (count > 1) {
    f.noise_split = -2;
  } else {  // the first split whose inclusive noise count reaches before + 1
    f.noise_split = lower_bound(s.noise_incl, s.num_splits, before + 1);
  }
  return f;
}

// Class of the (query block r, key block c) pair; padding beyond L counts as masked, exactly
// as create_block_mask pads its dense mask with False before summing blocks.
PP_HD int8_t block_class(const BlockFeat& q, const BlockFeat& k, int64_t r, int64_t c, int64_t bs) {
  bool nonempty;
  if (r == c) {
    nonempty = true;  // the diagonal q == k is always allowed
  } else if (c > r) {
    // keys after every query: only a full/noise split holding both the last query and the
    // first key lets any through (k.mode_lo is that split's mode when the two splits agree)
    nonempty = q.sp_last == k.sp_lo && k.mode_lo != kCausal;
  } else {
    // keys before every query: only the sample of the first query reaches back; it sees its
    // own split from split_start on, and the non-noise tokens of its sample before that
    const int64_t s0 = q.sample_start;
    if (s0 >= k.hi) {
      nonempty = false;
    } else if (q.split_start < k.hi) {
      nonempty = true;
    } else {
      const int64_t from = s0 > k.lo ? q.nn_sample_start : k.nn_lo;
      nonempty = k.nn_hi > from;
    }
  }
  if (!nonempty) return kEmpty;
  const bool unpadded = (q.hi - q.lo) == bs && (k.hi - k.lo) == bs;
  const bool one_sample = q.sam_lo == q.sam_last && k.sam_lo == k.sam_last && q.sam_lo == k.sam_lo;
  const bool order_ok = (k.hi - 1 <= q.lo) || (q.sp_lo == k.sp_last && q.mode_lo != kCausal);
  const bool noise_ok = k.noise_split == -1 ||
                        (k.noise_split >= 0 && q.sp_lo == q.sp_last && q.sp_lo == k.noise_split);
  return (unpadded && one_sample && order_ok && noise_ok) ? kFullBlock : kPartial;
}

// create_block_mask's ordering of one line of n classes read with `stride` (a kv row: stride 1;
// a q column: stride nb): indices of class `want` ascending, then all others ascending
// (what its stable descending argsort of the 0/1 block matrix yields). Writes *count and idx[n].
PP_HD void order_line(const int8_t* cls, int64_t stride, int64_t n, int8_t want, int32_t* count,
                      int32_t* idx) {
  int32_t k = 0;
  for (int64_t c = 0; c < n; ++c) if (cls[c * stride] == want) idx[k++] = (int32_t)c;
  *count = k;
  for (int64_t c = 0; c < n; ++c) if (cls[c * stride] != want) idx[k++] = (int32_t)c;
}

}  // namespace packing
}  // namespace procpaint
