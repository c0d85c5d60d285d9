// CUDA kernels of the rectified-flow ops (launchers declared in flow_kernels.cuh).
//
// One mapping serves every op: a group of G lanes (a power of two <= 32, about D / VEC) owns a
// row; a 256-thread block covers 256 / G rows per step and grid-strides over the rest. Lanes read
// VEC consecutive elements (16 bytes) when every pointer, row stride and D allow it, else one.
// Row reductions (the loss, grad_t) are xor-shuffles inside the group; the reduced loss adds a
// block reduction into a per-block partial and a one-block final pass (fixed order: the result
// does not change between runs). Accumulation is float32 throughout. rf_mse_with_grad is the
// loss kernel storing, from the values it already holds, the loss's gradient w.r.t. pred.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "flow/flow_kernels.cuh"

namespace procpaint::flow::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& x) {
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

__device__ __forceinline__ float time_of(const TimeArg& ta, int64_t row) {
  if (ta.index == nullptr) return ta.t[row];
  const int64_t k = ta.index64 ? static_cast<const int64_t*>(ta.index)[row]
                               : static_cast<int64_t>(static_cast<const int32_t*>(ta.index)[row]);
  if (k < 0 || k >= ta.num_t) {
    printf("procpaint rf_interpolate: index[%lld] = %lld is out of range [0, %lld)\n",
           static_cast<long long>(row), static_cast<long long>(k), static_cast<long long>(ta.num_t));
    __trap();
  }
  return ta.t[k];
}

// Sum over the G lanes of a group (all 32 lanes of the warp must call it).
__device__ __forceinline__ float group_sum(float s, int g) {
  for (int off = g / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off, g);
  return s;
}

struct Map {  // row/lane of this thread in the group mapping
  int g, lane, rows_per_block;
  __device__ Map(int g_) : g(g_), lane(threadIdx.x % g_), rows_per_block(blockDim.x / g_) {}
  __device__ int64_t first_base() const { return static_cast<int64_t>(blockIdx.x) * rows_per_block; }
  __device__ int64_t step() const { return static_cast<int64_t>(gridDim.x) * rows_per_block; }
  __device__ int64_t row(int64_t base) const { return base + threadIdx.x / g; }
};

template <typename T, int V>
__global__ void interp_fwd_kernel(const T* __restrict__ c, int64_t ldc, const T* __restrict__ nz,
                                  int64_t ldn, TimeArg ta, T* __restrict__ out, int64_t n,
                                  int64_t d, int g) {
  const Map m(g);
  for (int64_t row = m.row(m.first_base()); row < n; row += m.step()) {
    const float ti = time_of(ta, row), si = 1.0f - ti;
    for (int64_t j = static_cast<int64_t>(m.lane) * V; j < d; j += static_cast<int64_t>(g) * V) {
      const Pack<T, V> a = load<T, V>(c + row * ldc + j), b = load<T, V>(nz + row * ldn + j);
      Pack<T, V> z;
#pragma unroll
      for (int k = 0; k < V; ++k) z.v[k] = from_f<T>(ti * to_f(b.v[k]) + si * to_f(a.v[k]));
      store<T, V>(out + row * d + j, z);
    }
  }
}

template <typename T, int V>
__global__ void interp_bwd_kernel(const T* __restrict__ gr, int64_t ldg, const T* __restrict__ c,
                                  int64_t ldc, const T* __restrict__ nz, int64_t ldn, TimeArg ta,
                                  T* __restrict__ gc, T* __restrict__ gn, float* __restrict__ gt,
                                  int64_t n, int64_t d, int g) {
  const Map m(g);
  // The loop bound is uniform per warp (base, not row) so every lane reaches the shuffles.
  for (int64_t base = m.first_base(); base < n; base += m.step()) {
    const int64_t row = m.row(base);
    const bool active = row < n;
    const float ti = active ? time_of(ta, row) : 0.0f, si = 1.0f - ti;
    float s = 0.0f;
    for (int64_t j = static_cast<int64_t>(m.lane) * V; active && j < d; j += static_cast<int64_t>(g) * V) {
      const Pack<T, V> q = load<T, V>(gr + row * ldg + j);
      if (gc != nullptr || gn != nullptr) {
        Pack<T, V> a, b;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          a.v[k] = from_f<T>(si * to_f(q.v[k]));
          b.v[k] = from_f<T>(ti * to_f(q.v[k]));
        }
        if (gc != nullptr) store<T, V>(gc + row * d + j, a);
        if (gn != nullptr) store<T, V>(gn + row * d + j, b);
      }
      if (gt != nullptr) {
        const Pack<T, V> a = load<T, V>(c + row * ldc + j), b = load<T, V>(nz + row * ldn + j);
#pragma unroll
        for (int k = 0; k < V; ++k) s += (to_f(b.v[k]) - to_f(a.v[k])) * to_f(q.v[k]);
      }
    }
    if (gt != nullptr) {
      s = group_sum(s, g);
      if (active && m.lane == 0) gt[row] = s;
    }
  }
}

// gp (optional, contiguous (N, D)): also store gscale * (pred - target), the loss's gradient
// w.r.t. pred for an upstream grad of 1, from the values the loss reads.
template <typename T, int V>
__global__ void mse_fwd_kernel(const T* __restrict__ p, int64_t ldp, const T* __restrict__ c,
                               int64_t ldc, const T* __restrict__ nz, int64_t ldn, int64_t n,
                               int64_t d, int g, float* __restrict__ rows, float* __restrict__ partial,
                               T* __restrict__ gp, float gscale) {
  const Map m(g);
  const float inv_d = 1.0f / static_cast<float>(d);
  float acc = 0.0f;  // this thread's share of the block partial (lane 0 of each group)
  for (int64_t base = m.first_base(); base < n; base += m.step()) {
    const int64_t row = m.row(base);
    float s = 0.0f;
    for (int64_t j = static_cast<int64_t>(m.lane) * V; row < n && j < d; j += static_cast<int64_t>(g) * V) {
      const Pack<T, V> a = load<T, V>(p + row * ldp + j), b = load<T, V>(c + row * ldc + j),
                       e = load<T, V>(nz + row * ldn + j);
      Pack<T, V> q;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float diff = to_f(a.v[k]) - (to_f(e.v[k]) - to_f(b.v[k]));  // pred - target
        s += diff * diff;
        q.v[k] = from_f<T>(gscale * diff);
      }
      if (gp != nullptr) store<T, V>(gp + row * d + j, q);
    }
    s = group_sum(s, g);
    if (row < n && m.lane == 0) {
      if (rows != nullptr) rows[row] = s * inv_d;
      else acc += s;
    }
  }
  if (rows != nullptr) return;
  __shared__ float warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    partial[blockIdx.x] = total;
  }
}

__global__ void mse_finalize_kernel(const float* __restrict__ partial, int nb, double scale,
                                    float* __restrict__ out) {
  __shared__ double sums[kThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < nb; i += blockDim.x) s += partial[i];
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sums[threadIdx.x] += sums[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = static_cast<float>(sums[0] * scale);
}

template <typename T, int V>
__global__ void mse_bwd_kernel(const float* __restrict__ gr, int64_t gstride, float base_scale,
                               const T* __restrict__ p, int64_t ldp, const T* __restrict__ c,
                               int64_t ldc, const T* __restrict__ nz, int64_t ldn,
                               T* __restrict__ gp, T* __restrict__ gc, T* __restrict__ gn,
                               int64_t n, int64_t d, int g) {
  const Map m(g);
  for (int64_t row = m.row(m.first_base()); row < n; row += m.step()) {
    const float s = base_scale * gr[row * gstride];
    for (int64_t j = static_cast<int64_t>(m.lane) * V; j < d; j += static_cast<int64_t>(g) * V) {
      const Pack<T, V> a = load<T, V>(p + row * ldp + j), b = load<T, V>(c + row * ldc + j),
                       e = load<T, V>(nz + row * ldn + j);
      Pack<T, V> pos, neg;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float v = s * (to_f(a.v[k]) - (to_f(e.v[k]) - to_f(b.v[k])));
        pos.v[k] = from_f<T>(v);
        neg.v[k] = from_f<T>(-v);
      }
      if (gp != nullptr) store<T, V>(gp + row * d + j, pos);
      if (gc != nullptr) store<T, V>(gc + row * d + j, pos);
      if (gn != nullptr) store<T, V>(gn + row * d + j, neg);
    }
  }
}

template <typename T, int V>
__global__ void euler_kernel(const T* __restrict__ x, const T* __restrict__ v,
                             const float* __restrict__ dt, int64_t dt_stride, float dt_scalar,
                             T* __restrict__ out, int64_t n, int64_t d, int g) {
  const Map m(g);
  for (int64_t row = m.row(m.first_base()); row < n; row += m.step()) {
    const float h = dt != nullptr ? dt[row * dt_stride] : dt_scalar;
    for (int64_t j = static_cast<int64_t>(m.lane) * V; j < d; j += static_cast<int64_t>(g) * V) {
      const Pack<T, V> a = load<T, V>(x + row * d + j), b = load<T, V>(v + row * d + j);
      Pack<T, V> z;
#pragma unroll
      for (int k = 0; k < V; ++k) z.v[k] = from_f<T>(to_f(a.v[k]) - to_f(b.v[k]) * h);
      store<T, V>(out + row * d + j, z);
    }
  }
}

// ---------------------------------------------------------------- launch plumbing
struct Shape {
  int vec, g, blocks;
};

int sm_count() {
  int dev = 0, sms = 108;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms;
}

// vec: 16-byte packs if D, every row stride and every pointer allow it. g: lanes per row.
template <typename T>
Shape plan(int64_t n, int64_t d, std::initializer_list<const void*> ptrs,
           std::initializer_list<int64_t> lds, int max_blocks_per_sm = 32) {
  int vec = 16 / static_cast<int>(sizeof(T));
  bool ok = d % vec == 0;
  for (const void* p : ptrs) ok = ok && (p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0);
  for (int64_t ld : lds) ok = ok && ld % vec == 0;
  if (!ok) vec = 1;
  const int64_t packs = (d + vec - 1) / vec;
  int g = 1;
  while (g < 32 && g < packs) g *= 2;
  const int64_t rows_per_block = kThreads / g;
  const int64_t need = (n + rows_per_block - 1) / rows_per_block;
  const int64_t cap = static_cast<int64_t>(sm_count()) * max_blocks_per_sm;
  return {vec, g, static_cast<int>(need < cap ? (need > 0 ? need : 1) : cap)};
}

template <typename F>
cudaError_t by_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kF32: return f(float{});
    case DType::kBF16: return f(__nv_bfloat16{});
    case DType::kF16: return f(__half{});
  }
  return cudaErrorInvalidValue;
}

#define PP_LAUNCH_VEC(VEC_EXPR, KERNEL, GRID, STREAM, ...)                                   \
  do {                                                                                       \
    constexpr int kVec = 16 / sizeof(T);                                                     \
    if ((VEC_EXPR) == kVec) KERNEL<T, kVec><<<(GRID), kThreads, 0, (STREAM)>>>(__VA_ARGS__); \
    else KERNEL<T, 1><<<(GRID), kThreads, 0, (STREAM)>>>(__VA_ARGS__);                       \
  } while (0)

}  // namespace

cudaError_t launch_rf_interpolate(DType dt, const void* clean, int64_t ldc, const void* noise,
                                  int64_t ldn, TimeArg t, void* out, int64_t n, int64_t d,
                                  cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const Shape s = plan<T>(n, d, {clean, noise, out}, {ldc, ldn, d});
    PP_LAUNCH_VEC(s.vec, interp_fwd_kernel, s.blocks, stream, static_cast<const T*>(clean), ldc,
                  static_cast<const T*>(noise), ldn, t, static_cast<T*>(out), n, d, s.g);
    return cudaGetLastError();
  });
}

cudaError_t launch_rf_interpolate_backward(DType dt, const void* grad, int64_t ldg,
                                           const void* clean, int64_t ldc, const void* noise,
                                           int64_t ldn, TimeArg t, void* grad_clean,
                                           void* grad_noise, float* grad_t, int64_t n, int64_t d,
                                           cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const Shape s = plan<T>(n, d, {grad, clean, noise, grad_clean, grad_noise}, {ldg, ldc, ldn, d});
    PP_LAUNCH_VEC(s.vec, interp_bwd_kernel, s.blocks, stream, static_cast<const T*>(grad), ldg,
                  static_cast<const T*>(clean), ldc, static_cast<const T*>(noise), ldn, t,
                  static_cast<T*>(grad_clean), static_cast<T*>(grad_noise), grad_t, n, d, s.g);
    return cudaGetLastError();
  });
}

int rf_mse_num_blocks(int64_t n, int64_t d) {
  // Planned as float32 whatever the dtype, so the glue can size the workspace before dispatch;
  // at most 4 blocks per SM (any grid size is correct: idle blocks write a zero partial).
  return plan<float>(n, d, {}, {}, 4).blocks;
}

namespace {

// rf_mse's loss; grad_pred (nullptr: none) also gets the gradient for an upstream grad of 1.
cudaError_t mse_forward(DType dt, const void* pred, int64_t ldp, const void* clean, int64_t ldc,
                        const void* noise, int64_t ldn, int64_t n, int64_t d, int reduction,
                        float* out, float* workspace, void* grad_pred, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int nb = rf_mse_num_blocks(n, d);  // grid fixed by (n, d, device): deterministic sums
  // d(mean_D (pred - target)^2)/d pred = 2 (pred - target) / D, times 1/N for "mean".
  const float gscale = 2.0f / static_cast<float>(d) / (reduction == 1 ? static_cast<float>(n) : 1.0f);
  cudaError_t err = by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const Shape s = plan<T>(n, d, {pred, clean, noise, grad_pred}, {ldp, ldc, ldn}, 4);
    float* rows = reduction == 0 ? out : nullptr;
    PP_LAUNCH_VEC(s.vec, mse_fwd_kernel, reduction == 0 ? s.blocks : nb, stream,
                  static_cast<const T*>(pred), ldp, static_cast<const T*>(clean), ldc,
                  static_cast<const T*>(noise), ldn, n, d, s.g, rows, workspace,
                  static_cast<T*>(grad_pred), gscale);
    return cudaGetLastError();
  });
  if (err != cudaSuccess || reduction == 0) return err;
  const double scale = 1.0 / static_cast<double>(d) / (reduction == 1 ? static_cast<double>(n) : 1.0);
  mse_finalize_kernel<<<1, kThreads, 0, stream>>>(workspace, nb, scale, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rf_mse(DType dt, const void* pred, int64_t ldp, const void* clean, int64_t ldc,
                          const void* noise, int64_t ldn, int64_t n, int64_t d, int reduction,
                          float* out, float* workspace, cudaStream_t stream) {
  return mse_forward(dt, pred, ldp, clean, ldc, noise, ldn, n, d, reduction, out, workspace,
                     nullptr, stream);
}

cudaError_t launch_rf_mse_with_grad(DType dt, const void* pred, int64_t ldp, const void* clean,
                                    int64_t ldc, const void* noise, int64_t ldn, int64_t n,
                                    int64_t d, int reduction, float* out, float* workspace,
                                    void* grad_pred, cudaStream_t stream) {
  return mse_forward(dt, pred, ldp, clean, ldc, noise, ldn, n, d, reduction, out, workspace,
                     grad_pred, stream);
}

cudaError_t launch_rf_mse_backward(DType dt, const float* grad, int64_t grad_stride, float base,
                                   const void* pred, int64_t ldp, const void* clean, int64_t ldc,
                                   const void* noise, int64_t ldn, void* grad_pred,
                                   void* grad_clean, void* grad_noise, int64_t n, int64_t d,
                                   cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const Shape s = plan<T>(n, d, {pred, clean, noise, grad_pred, grad_clean, grad_noise}, {ldp, ldc, ldn, d});
    PP_LAUNCH_VEC(s.vec, mse_bwd_kernel, s.blocks, stream, grad, grad_stride, base,
                  static_cast<const T*>(pred), ldp, static_cast<const T*>(clean), ldc,
                  static_cast<const T*>(noise), ldn, static_cast<T*>(grad_pred),
                  static_cast<T*>(grad_clean), static_cast<T*>(grad_noise), n, d, s.g);
    return cudaGetLastError();
  });
}

cudaError_t launch_euler_step(DType dt, const void* x, const void* v, const float* dt_ptr,
                              int64_t dt_stride, float dt_scalar, void* out, int64_t n, int64_t d,
                              cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  return by_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const Shape s = plan<T>(n, d, {x, v, out}, {d});
    PP_LAUNCH_VEC(s.vec, euler_kernel, s.blocks, stream, static_cast<const T*>(x),
                  static_cast<const T*>(v), dt_ptr, dt_stride, dt_scalar, static_cast<T*>(out), n,
                  d, s.g);
    return cudaGetLastError();
  });
}

}  // namespace procpaint::flow::cuda
