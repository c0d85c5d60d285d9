// Row kernels of the CPU flow ops, the part that runs per element. NO include guard on purpose:
// flow_cpu.cpp includes this body twice, once per instruction set, each time inside its own
// namespace and with FLOW_TARGET set (empty for the baseline build, an AVX2 target attribute
// for the other), so the same source is compiled twice and the kernels pick one
// `RowKernels<T>` table at run time (flow_cpu.cpp, cpu_isa()). Prerequisites (declared before
// the include): In<T>, TimeView, RowKernels<T>, kCol, and <cstring>/<ATen/ATen.h>.
//
// Every function handles the rows [b, e) of one parallel task. Arithmetic is float32 (half
// types widened on load, rounded once on store) and the same on both builds: no FMA (the
// kernels are memory bound, and a contracted a*b+c would break bit-equality with eager torch),
// and row sums keep 8 fixed partial sums combined in a fixed order, so the loss depends on
// neither the vector width nor the thread count.
#ifndef FLOW_TARGET
#error "define FLOW_TARGET before including flow/flow_rows.h"
#endif

// --- float32 <-> storage type. bf16 rounding is written branch-light so loops vectorize. No
// FLOW_TARGET needed: plain inline functions inline into both builds.
inline float to_f(float x) { return x; }
inline float to_f(c10::Half x) { return static_cast<float>(x); }
inline float to_f(c10::BFloat16 x) {
  uint32_t u = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T> inline T from_f(float x);
template <> inline float from_f<float>(float x) { return x; }
template <> inline c10::Half from_f<c10::Half>(float x) { return c10::Half(x); }
template <> inline c10::BFloat16 from_f<c10::BFloat16>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  c10::BFloat16 r;
  r.x = static_cast<uint16_t>(x != x ? 0x7fc0u : rounded);          // keep NaN a NaN
  return r;
}

// Row sums run on 8 float32 lanes (GCC/clang vector extension: one 256-bit register on the
// AVX2 build, two 128-bit ones on the baseline), the tail zero-padded, the lanes added in a fixed
// tree: same bits on both builds, whatever the vector width.
// Vectors go by reference: a 32-byte vector passed or returned by value in the baseline build
// draws GCC's -Wpsabi warning (harmless here, everything inlines, but noisy).
typedef float F8 __attribute__((vector_size(32)));
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef uint32_t U32x8 __attribute__((vector_size(32)));

template <typename T>
FLOW_TARGET inline void load8(const T* x, int64_t m, F8& v) {  // x[0 : m], m <= 8, zero padded
  float tmp[8] = {};
  for (int64_t l = 0; l < m; ++l) tmp[l] = to_f(x[l]);
  std::memcpy(&v, tmp, sizeof v);
}
FLOW_TARGET inline void load8(const float* x, F8& v) { std::memcpy(&v, x, sizeof v); }
FLOW_TARGET inline void load8(const c10::BFloat16* x, F8& v) {  // bf16 -> f32: 16-bit left shift
  U16x8 h;
  std::memcpy(&h, x, sizeof h);
  const U32x8 w = __builtin_convertvector(h, U32x8) << 16;
  std::memcpy(&v, &w, sizeof v);
}
FLOW_TARGET inline void load8(const c10::Half* x, F8& v) { load8(x, 8, v); }

// v[0 : m] -> x[0 : m], m <= 8, each lane rounded once with from_f.
template <typename T>
FLOW_TARGET inline void store8(T* x, int64_t m, const F8& v) {
  float tmp[8];
  std::memcpy(tmp, &v, sizeof v);
  for (int64_t l = 0; l < m; ++l) x[l] = from_f<T>(tmp[l]);
}
FLOW_TARGET inline void store8(float* x, const F8& v) { std::memcpy(x, &v, sizeof v); }
FLOW_TARGET inline void store8(c10::BFloat16* x, const F8& v) {  // from_f's rounding, 8 lanes
  U32x8 u;
  std::memcpy(&u, &v, sizeof u);
  U32x8 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const U32x8 nan = (U32x8)(v != v);  // lane mask: all ones where v is NaN (a bit cast)
  r = (r & ~nan) | (nan & 0x7fc0u);
  const U16x8 h = __builtin_convertvector(r, U16x8);
  std::memcpy(x, &h, sizeof h);
}
FLOW_TARGET inline void store8(c10::Half* x, const F8& v) { store8(x, 8, v); }

// The 8 lanes added in one fixed tree: a row's sum has the same bits on both builds, and the loss
// kernels that share it (row_sum, mse_grad_rows) agree to the bit.
FLOW_TARGET inline float lane_sum(const F8& a) {
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

// acc += (u - (n - c))^2 if kSquare (the loss; u = pred), else (n - c) u (grad_t; u = grad).
template <bool kSquare>
FLOW_TARGET inline void add_term(const F8& u, const F8& n, const F8& c, F8& acc) {
  const F8 y = n - c;  // target
  if constexpr (kSquare) {
    const F8 x = u - y;
    acc += x * x;
  } else {
    acc += y * u;
  }
}

// sum_j of the term above over a row of length d.
template <bool kSquare, typename T>
FLOW_TARGET inline float row_sum(const T* u, const T* n, const T* c, int64_t d) {
  F8 acc = {}, vu, vn, vc;
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    load8(u + j, vu), load8(n + j, vn), load8(c + j, vc);
    add_term<kSquare>(vu, vn, vc, acc);
  }
  if (j < d) {
    load8(u + j, d - j, vu), load8(n + j, d - j, vn), load8(c + j, d - j, vc);
    add_term<kSquare>(vu, vn, vc, acc);
  }
  return lane_sum(acc);
}

// z = t * noise + (1 - t) * clean; z contiguous (N, D).
template <typename T>
FLOW_TARGET void interp_rows(In<T> c, In<T> nz, TimeView tv, T* z, int64_t d, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const float ti = tv(i), si = 1.0f - ti;  // (1 - t) * clean keeps t = 0 / t = 1 exact
    const T* ci = c.row(i);
    const T* ni = nz.row(i);
    T* zi = z + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) zi[j] = from_f<T>(ti * to_f(ni[j]) + si * to_f(ci[j]));
  }
}

// grad_clean = g (1 - t), grad_noise = g t, grad_t[i] = sum_j (noise - clean) g; null = skip.
template <typename T>
FLOW_TARGET void interp_bwd_rows(In<T> g, In<T> c, In<T> nz, TimeView tv, T* pc, T* pn, float* pt,
                                 int64_t d, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const float ti = tv(i), si = 1.0f - ti;
    const T* gi = g.row(i);
    if (pc) {
      T* o = pc + i * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) o[j] = from_f<T>(si * to_f(gi[j]));
    }
    if (pn) {
      T* o = pn + i * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) o[j] = from_f<T>(ti * to_f(gi[j]));
    }
    if (pt) {
      pt[i] = row_sum<false>(gi, nz.row(i), c.row(i), d);
    }
  }
}

// Sum over rows of sum_j (pred - (noise - clean))^2, float32 per row, double across rows (the
// caller's chunks are fixed by D, so the total does not depend on the thread count). rows (N,):
// optional per-row mean (times inv_d).
template <typename T>
FLOW_TARGET double mse_rows(In<T> p, In<T> c, In<T> nz, float* rows, float inv_d, int64_t d,
                            int64_t b, int64_t e) {
  double acc = 0.0;
  for (int64_t i = b; i < e; ++i) {
    const float s = row_sum<true>(p.row(i), nz.row(i), c.row(i), d);
    if (rows) rows[i] = s * inv_d;
    acc += s;
  }
  return acc;
}

// mse_rows, and in the same sweep g = base (pred - target) stored to g (contiguous (N, D)): the
// gradient of the loss w.r.t. pred for an upstream grad of 1. The loss is summed exactly as in
// row_sum<true> (same lanes, same tree), so it is bit-equal to mse_rows; g is bit-equal to
// mse_bwd_rows with g[i] = 1 (same float32 product, one rounding).
template <typename T>
FLOW_TARGET double mse_grad_rows(In<T> p, In<T> c, In<T> nz, float* rows, float inv_d, float base,
                                 T* g, int64_t d, int64_t b, int64_t e) {
  double acc = 0.0;
  for (int64_t i = b; i < e; ++i) {
    const T* pi = p.row(i);
    const T* ci = c.row(i);
    const T* ni = nz.row(i);
    T* gi = g + i * d;
    F8 sq = {}, vp, vn, vc;
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
      load8(pi + j, vp), load8(ni + j, vn), load8(ci + j, vc);
      const F8 x = vp - (vn - vc);  // pred - target
      sq += x * x;
      const F8 gv = x * base;
      store8(gi + j, gv);
    }
    if (j < d) {
      load8(pi + j, d - j, vp), load8(ni + j, d - j, vn), load8(ci + j, d - j, vc);
      const F8 x = vp - (vn - vc);  // zero in the padded lanes
      sq += x * x;
      const F8 gv = x * base;
      store8(gi + j, d - j, gv);
    }
    const float s = lane_sum(sq);
    if (rows) rows[i] = s * inv_d;
    acc += s;
  }
  return acc;
}

// grad_pred = grad_clean = scale_i (pred - target), grad_noise = -grad_pred, scale_i = base *
// g[i * gstride]; every requested gradient is written in the same sweep (null = skip).
template <typename T>
FLOW_TARGET void mse_bwd_rows(In<T> p, In<T> c, In<T> nz, const float* g, int64_t gstride,
                              float base, T* gp, T* gc, T* gn, int64_t d, int64_t b, int64_t e) {
  float buf[kCol];  // one column block of the gradient, computed once, stored 1-3 times
  for (int64_t i = b; i < e; ++i) {
    const float s = base * g[i * gstride];
    for (int64_t j0 = 0; j0 < d; j0 += kCol) {
      const int64_t w = std::min(kCol, d - j0);
      const T* pi = p.row(i) + j0;
      const T* ci = c.row(i) + j0;
      const T* ni = nz.row(i) + j0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) buf[j] = s * (to_f(pi[j]) - (to_f(ni[j]) - to_f(ci[j])));
      T* outs[2] = {gp ? gp + i * d + j0 : nullptr, gc ? gc + i * d + j0 : nullptr};
      for (T* o : outs) {
        if (!o) continue;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) o[j] = from_f<T>(buf[j]);
      }
      if (gn) {
        T* o = gn + i * d + j0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) o[j] = from_f<T>(-buf[j]);
      }
    }
  }
}

// out = x - v * h_i, h_i = dt[i * dstride] if dt else h; x, v, out contiguous (N, D).
template <typename T>
FLOW_TARGET void euler_rows(const T* x, const T* v, const float* dt, int64_t dstride, float h,
                            T* out, int64_t d, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const float hi = dt ? dt[i * dstride] : h;
    const T* xi = x + i * d;
    const T* vi = v + i * d;
    T* oi = out + i * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) oi[j] = from_f<T>(to_f(xi[j]) - to_f(vi[j]) * hi);
  }
}

template <typename T>
RowKernels<T> row_kernels() {
  return {&interp_rows<T>, &interp_bwd_rows<T>, &mse_rows<T>, &mse_grad_rows<T>, &mse_bwd_rows<T>,
          &euler_rows<T>};
}
