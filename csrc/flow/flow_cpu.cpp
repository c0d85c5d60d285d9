// CPU kernels of the rectified-flow ops (schemas: csrc/flow/schemas.h) and their Meta impls.
//
// Every op is one pass over its (N, D) inputs: rows are split across threads with
// at::parallel_for (OpenMP in torch's CPU builds), the inner loop over D is a plain float32 loop
// the compiler vectorizes (`omp simd`). Half-precision values are widened to float32 on load
// and rounded once on store. The loss never materializes an (N, D) temporary: each fixed-size
// chunk of rows reduces to one double, so extra memory is O(N / chunk) and the result does not
// depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "flow/flow_checks.h"

namespace procpaint::flow {
namespace {

// --- float32 <-> storage type. bf16 rounding is written branch-light so loops vectorize. ---
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

template <typename F>
void dispatch_dtype(at::ScalarType st, const char* op, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", st);
  }
}

// Rows per parallel task: ~32K elements, so small D still gets coarse tasks.
inline int64_t grain_rows(int64_t d) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1)); }
constexpr int64_t kCol = 256;  // column block of the per-row scratch buffers (stack, not heap)

// Per-token t pointer: t[i] or t[index[i]]; the range of index was validated before the pass.
struct TimeView {
  const float* t;
  const int64_t* i64;
  const int32_t* i32;
  inline float operator()(int64_t i) const {
    return i64 ? t[i64[i]] : (i32 ? t[i32[i]] : t[i]);
  }
};

TimeView make_time_view(const char* op, const at::Tensor& t, const c10::optional<at::Tensor>& index,
                        at::Tensor& t_keep, at::Tensor& ix_keep) {
  t_keep = t.contiguous();
  TimeView tv{t_keep.data_ptr<float>(), nullptr, nullptr};
  if (!has_index(index)) return tv;
  ix_keep = index->contiguous();
  const int64_t m = t.size(0), n = ix_keep.numel();
  // O(N) range check before the pass, so an out-of-range id is an error, not a wild read.
  auto check = [&](auto* p) {
    int64_t bad = at::parallel_reduce(0, n, 65536, int64_t{-1}, [&](int64_t b, int64_t e, int64_t acc) {
      for (int64_t i = b; i < e && acc < 0; ++i)
        if (p[i] < 0 || p[i] >= m) acc = i;
      return acc;
    }, [](int64_t a, int64_t b) { return a >= 0 ? a : b; });
    TORCH_CHECK(bad < 0, op, ": index[", bad, "] = ", static_cast<int64_t>(bad >= 0 ? p[bad] : 0),
                " is out of range for t with ", m, " images (expected 0 <= index < ", m, ")");
  };
  if (ix_keep.scalar_type() == at::kLong) {
    tv.i64 = ix_keep.data_ptr<int64_t>();
    check(tv.i64);
  } else {
    tv.i32 = ix_keep.data_ptr<int32_t>();
    check(tv.i32);
  }
  return tv;
}

at::Tensor empty0(const at::Tensor& like) { return at::empty({0}, like.options()); }

// ------------------------------------------------------------------ rf_interpolate
at::Tensor rf_interpolate_cpu(const at::Tensor& clean_in, const at::Tensor& noise_in,
                              const at::Tensor& t, const c10::optional<at::Tensor>& index) {
  constexpr const char* op = "rf_interpolate";
  check_rows(op, "clean", clean_in);
  check_like(op, "clean", clean_in, "noise", noise_in);
  const int64_t n = clean_in.size(0), d = clean_in.size(1);
  check_t(op, t, index, n, clean_in.device());
  at::Tensor clean = as_rows(clean_in), noise = as_rows(noise_in), t_keep, ix_keep;
  TimeView tv = make_time_view(op, t, index, t_keep, ix_keep);
  at::Tensor z = at::empty({n, d}, clean.options());  // (N, D)
  if (z.numel() == 0) return z;
  const int64_t ldc = row_stride(clean), ldn = row_stride(noise);
  dispatch_dtype(clean.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* c = clean.data_ptr<T>();
    const T* nz = noise.data_ptr<T>();
    T* out = z.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(d), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float ti = tv(i), si = 1.0f - ti;  // (1 - t) * clean keeps t = 0 / t = 1 exact
        const T* ci = c + i * ldc;
        const T* ni = nz + i * ldn;
        T* zi = out + i * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) zi[j] = from_f<T>(ti * to_f(ni[j]) + si * to_f(ci[j]));
      }
    });
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_interpolate_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& clean_in, const at::Tensor& noise_in,
    const at::Tensor& t, const c10::optional<at::Tensor>& index, std::array<bool, 3> mask) {
  constexpr const char* op = "rf_interpolate_backward";
  check_rows(op, "clean", clean_in);
  check_like(op, "clean", clean_in, "noise", noise_in);
  check_like(op, "clean", clean_in, "grad", grad_in);
  const int64_t n = clean_in.size(0), d = clean_in.size(1);
  check_t(op, t, index, n, clean_in.device());
  at::Tensor grad = as_rows(grad_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  at::Tensor t_keep, ix_keep;
  TimeView tv = make_time_view(op, t, index, t_keep, ix_keep);
  at::Tensor gc = mask[0] ? at::empty({n, d}, clean.options()) : empty0(clean);  // (N, D)
  at::Tensor gn = mask[1] ? at::empty({n, d}, clean.options()) : empty0(clean);  // (N, D)
  at::Tensor gt = mask[2] ? at::empty({n}, t.options()) : empty0(t);             // (N,) f32
  if (n == 0 || !(mask[0] || mask[1] || mask[2])) return {gc, gn, gt};
  const int64_t ldg = row_stride(grad), ldc = row_stride(clean), ldn = row_stride(noise);
  dispatch_dtype(clean.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* g = grad.data_ptr<T>();
    const T* c = clean.data_ptr<T>();
    const T* nz = noise.data_ptr<T>();
    T* pc = mask[0] ? gc.data_ptr<T>() : nullptr;
    T* pn = mask[1] ? gn.data_ptr<T>() : nullptr;
    float* pt = mask[2] ? gt.data_ptr<float>() : nullptr;
    at::parallel_for(0, n, grain_rows(d), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float ti = tv(i), si = 1.0f - ti;
        const T* gi = g + i * ldg;
        if (pc) {
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) pc[i * d + j] = from_f<T>(si * to_f(gi[j]));
        }
        if (pn) {
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) pn[i * d + j] = from_f<T>(ti * to_f(gi[j]));
        }
        if (pt) {
          const T* ci = c + i * ldc;
          const T* ni = nz + i * ldn;
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < d; ++j) s += (to_f(ni[j]) - to_f(ci[j])) * to_f(gi[j]);
          pt[i] = s;
        }
      }
    });
  });
  return {gc, gn, gt};
}

// ------------------------------------------------------------------ rf_mse
at::Tensor rf_mse_cpu(const at::Tensor& pred_in, const at::Tensor& clean_in,
                      const at::Tensor& noise_in, c10::string_view reduction) {
  constexpr const char* op = "rf_mse";
  const Reduction red = parse_reduction(op, reduction);
  check_rows(op, "pred", pred_in);
  check_like(op, "pred", pred_in, "clean", clean_in);
  check_like(op, "pred", pred_in, "noise", noise_in);
  const int64_t n = pred_in.size(0), d = pred_in.size(1);
  auto f32 = pred_in.options().dtype(at::kFloat);
  at::Tensor rows = red == kNone ? at::empty({n}, f32) : at::Tensor();  // (N,) only for "none"
  if (n == 0) {  // torch semantics: mean of nothing is nan, sum of nothing is 0
    if (red == kNone) return rows;
    return at::full({}, red == kMean ? std::numeric_limits<float>::quiet_NaN() : 0.0f, f32);
  }
  at::Tensor pred = as_rows(pred_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  const int64_t ldp = row_stride(pred), ldc = row_stride(clean), ldn = row_stride(noise);
  const int64_t chunk = grain_rows(d);  // fixed by D only: deterministic whatever the threads
  const int64_t nchunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(red == kNone ? 0 : nchunks);  // O(N / chunk) extra memory
  const float inv_d = 1.0f / static_cast<float>(d);
  dispatch_dtype(pred.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* p = pred.data_ptr<T>();
    const T* c = clean.data_ptr<T>();
    const T* nz = noise.data_ptr<T>();
    float* out_rows = red == kNone ? rows.data_ptr<float>() : nullptr;
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t k = cb; k < ce; ++k) {
        double acc = 0.0;
        for (int64_t i = k * chunk; i < std::min(n, (k + 1) * chunk); ++i) {
          const T* pi = p + i * ldp;
          const T* ci = c + i * ldc;
          const T* ni = nz + i * ldn;
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < d; ++j) {
            const float diff = to_f(pi[j]) - (to_f(ni[j]) - to_f(ci[j]));  // pred - target
            s += diff * diff;
          }
          if (out_rows) out_rows[i] = s * inv_d;
          acc += s;
        }
        if (!out_rows) partial[k] = acc;
      }
    });
  });
  if (red == kNone) return rows;
  double total = 0.0;
  for (double v : partial) total += v;
  total /= static_cast<double>(d);
  if (red == kMean) total /= static_cast<double>(n);
  return at::full({}, static_cast<float>(total), f32);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_mse_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& pred_in, const at::Tensor& clean_in,
    const at::Tensor& noise_in, c10::string_view reduction, std::array<bool, 3> mask) {
  constexpr const char* op = "rf_mse_backward";
  const Reduction red = parse_reduction(op, reduction);
  check_rows(op, "pred", pred_in);
  check_like(op, "pred", pred_in, "clean", clean_in);
  check_like(op, "pred", pred_in, "noise", noise_in);
  const int64_t n = pred_in.size(0), d = pred_in.size(1);
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat, op, ": grad must be float32, got ",
              grad_in.scalar_type());
  TORCH_CHECK(grad_in.device() == pred_in.device(), op, ": grad must be on ", pred_in.device());
  if (red == kNone) {
    TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == n, op, ": grad must have shape (", n,
                ",) for reduction='none', got ", grad_in.sizes());
  } else {
    TORCH_CHECK(grad_in.dim() == 0, op, ": grad must be 0-d for reduction='", std::string(reduction),
                "', got ", grad_in.sizes());
  }
  at::Tensor pred = as_rows(pred_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  auto mk = [&](bool on) { return on ? at::empty({n, d}, pred.options()) : empty0(pred); };
  at::Tensor gp = mk(mask[0]), gc = mk(mask[1]), gn = mk(mask[2]);  // (N, D) each
  if (n == 0 || d == 0 || !(mask[0] || mask[1] || mask[2])) return {gp, gc, gn};
  at::Tensor g = grad_in.contiguous();
  const float* gptr = g.data_ptr<float>();
  const int64_t gstride = red == kNone ? 1 : 0;
  // d(mean_D (pred - target)^2)/d pred = 2 (pred - target) / D, times 1/N for "mean".
  const float base = 2.0f / static_cast<float>(d) / (red == kMean ? static_cast<float>(n) : 1.0f);
  const int64_t ldp = row_stride(pred), ldc = row_stride(clean), ldn = row_stride(noise);
  dispatch_dtype(pred.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* p = pred.data_ptr<T>();
    const T* c = clean.data_ptr<T>();
    const T* nz = noise.data_ptr<T>();
    T* outs[3] = {mask[0] ? gp.data_ptr<T>() : nullptr, mask[1] ? gc.data_ptr<T>() : nullptr,
                  mask[2] ? gn.data_ptr<T>() : nullptr};
    at::parallel_for(0, n, grain_rows(d), [&](int64_t b, int64_t e) {
      float buf[kCol];  // one column block of the gradient, computed once, stored 1-3 times
      for (int64_t i = b; i < e; ++i) {
        const float s = base * gptr[i * gstride];
        for (int64_t j0 = 0; j0 < d; j0 += kCol) {
          const int64_t w = std::min(kCol, d - j0);
          const T* pi = p + i * ldp + j0;
          const T* ci = c + i * ldc + j0;
          const T* ni = nz + i * ldn + j0;
#pragma omp simd
          for (int64_t j = 0; j < w; ++j) buf[j] = s * (to_f(pi[j]) - (to_f(ni[j]) - to_f(ci[j])));
          for (int k = 0; k < 2; ++k) {
            if (!outs[k]) continue;
            T* o = outs[k] + i * d + j0;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) o[j] = from_f<T>(buf[j]);
          }
          if (outs[2]) {
            T* o = outs[2] + i * d + j0;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) o[j] = from_f<T>(-buf[j]);
          }
        }
      }
    });
  });
  return {gp, gc, gn};
}

// ------------------------------------------------------------------ euler_step
// x, v viewed as (N, D) with N = x.size(0); dt: scalar (dt_ptr == nullptr) or () / (N,) tensor.
at::Tensor euler_impl(const char* op, const at::Tensor& x_in, const at::Tensor& v_in, double dt,
                      const at::Tensor* dt_t) {
  TORCH_CHECK(x_in.dim() >= 1, op, ": x must have at least 1 dim, got a 0-d tensor");
  TORCH_CHECK(is_kernel_dtype(x_in.scalar_type()), op,
              ": x must be float32, bfloat16 or float16, got ", x_in.scalar_type());
  TORCH_CHECK(v_in.sizes() == x_in.sizes(), op, ": v must have the shape of x ", x_in.sizes(),
              ", got ", v_in.sizes());
  TORCH_CHECK(v_in.scalar_type() == x_in.scalar_type(), op, ": v must have the dtype of x (",
              x_in.scalar_type(), "), got ", v_in.scalar_type());
  TORCH_CHECK(v_in.device() == x_in.device(), op, ": v must be on x's device ", x_in.device());
  const int64_t n = x_in.size(0);
  at::Tensor dtc;
  if (dt_t) {
    TORCH_CHECK(dt_t->scalar_type() == at::kFloat, op, ": dt must be float32, got ",
                dt_t->scalar_type());
    TORCH_CHECK(dt_t->device() == x_in.device(), op, ": dt must be on x's device ", x_in.device());
    TORCH_CHECK(dt_t->dim() == 0 || (dt_t->dim() == 1 && dt_t->size(0) == n), op,
                ": dt must be 0-d or have shape (", n, ",), got ", dt_t->sizes());
    dtc = dt_t->contiguous();
  }
  at::Tensor out = at::empty_like(x_in, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t d = x_in.numel() / n;  // x viewed as (N, D)
  at::Tensor x = x_in.contiguous().view({n, d}), v = v_in.contiguous().view({n, d});
  const float* dptr = dtc.defined() ? dtc.data_ptr<float>() : nullptr;
  const int64_t dstride = dtc.defined() && dtc.dim() == 1 ? 1 : 0;
  const float dts = static_cast<float>(dt);
  dispatch_dtype(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data_ptr<T>();
    const T* pv = v.data_ptr<T>();
    T* po = out.data_ptr<T>();
    at::parallel_for(0, n, grain_rows(d), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float h = dptr ? dptr[i * dstride] : dts;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j)
          po[i * d + j] = from_f<T>(to_f(px[i * d + j]) - to_f(pv[i * d + j]) * h);
      }
    });
  });
  return out;
}

at::Tensor euler_step_cpu(const at::Tensor& x, const at::Tensor& v, double dt) {
  return euler_impl("euler_step", x, v, dt, nullptr);
}
at::Tensor euler_step_tensor_cpu(const at::Tensor& x, const at::Tensor& v, const at::Tensor& dt) {
  return euler_impl("euler_step", x, v, 0.0, &dt);
}

// ------------------------------------------------------------------ Meta (shapes only)
at::Tensor rf_interpolate_meta(const at::Tensor& clean, const at::Tensor& noise, const at::Tensor& t,
                               const c10::optional<at::Tensor>& index) {
  check_rows("rf_interpolate", "clean", clean);
  check_like("rf_interpolate", "clean", clean, "noise", noise);
  check_t("rf_interpolate", t, index, clean.size(0), clean.device());
  return at::empty_like(clean, at::MemoryFormat::Contiguous);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_interpolate_backward_meta(
    const at::Tensor& grad, const at::Tensor& clean, const at::Tensor& noise, const at::Tensor& t,
    const c10::optional<at::Tensor>& index, std::array<bool, 3> mask) {
  check_like("rf_interpolate_backward", "clean", clean, "grad", grad);
  check_t("rf_interpolate_backward", t, index, clean.size(0), clean.device());
  auto full = [&] { return at::empty_like(clean, at::MemoryFormat::Contiguous); };
  return {mask[0] ? full() : empty0(clean), mask[1] ? full() : empty0(clean),
          mask[2] ? at::empty({clean.size(0)}, t.options()) : empty0(t)};
}

at::Tensor rf_mse_meta(const at::Tensor& pred, const at::Tensor& clean, const at::Tensor& noise,
                       c10::string_view reduction) {
  const Reduction red = parse_reduction("rf_mse", reduction);
  check_like("rf_mse", "pred", pred, "clean", clean);
  check_like("rf_mse", "pred", pred, "noise", noise);
  auto f32 = pred.options().dtype(at::kFloat);
  return red == kNone ? at::empty({pred.size(0)}, f32) : at::empty({}, f32);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_mse_backward_meta(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& clean, const at::Tensor& noise,
    c10::string_view reduction, std::array<bool, 3> mask) {
  parse_reduction("rf_mse_backward", reduction);
  check_like("rf_mse_backward", "pred", pred, "clean", clean);
  auto mk = [&](bool on) {
    return on ? at::empty_like(pred, at::MemoryFormat::Contiguous) : empty0(pred);
  };
  return {mk(mask[0]), mk(mask[1]), mk(mask[2])};
}

at::Tensor euler_step_meta(const at::Tensor& x, const at::Tensor& v, double dt) {
  TORCH_CHECK(v.sizes() == x.sizes(), "euler_step: v must have the shape of x ", x.sizes());
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}
at::Tensor euler_step_tensor_meta(const at::Tensor& x, const at::Tensor& v, const at::Tensor& dt) {
  TORCH_CHECK(v.sizes() == x.sizes(), "euler_step: v must have the shape of x ", x.sizes());
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

}  // namespace
}  // namespace procpaint::flow

TORCH_LIBRARY_IMPL(procpaint, CPU, m) {
  using namespace procpaint::flow;
  m.impl("rf_interpolate", &rf_interpolate_cpu);
  m.impl("rf_interpolate_backward", &rf_interpolate_backward_cpu);
  m.impl("rf_mse", &rf_mse_cpu);
  m.impl("rf_mse_backward", &rf_mse_backward_cpu);
  m.impl("euler_step", &euler_step_cpu);
  m.impl("euler_step.dt_tensor", &euler_step_tensor_cpu);
}

TORCH_LIBRARY_IMPL(procpaint, Meta, m) {
  using namespace procpaint::flow;
  m.impl("rf_interpolate", &rf_interpolate_meta);
  m.impl("rf_interpolate_backward", &rf_interpolate_backward_meta);
  m.impl("rf_mse", &rf_mse_meta);
  m.impl("rf_mse_backward", &rf_mse_backward_meta);
  m.impl("euler_step", &euler_step_meta);
  m.impl("euler_step.dt_tensor", &euler_step_tensor_meta);
}
