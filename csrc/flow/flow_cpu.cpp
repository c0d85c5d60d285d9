// CPU kernels of the rectified-flow ops (schemas: csrc/flow/schemas.h; Meta impls: flow_meta.cpp).
//
// Every op is one pass over its (N, D) inputs: rows are split across threads with
// at::parallel_for (OpenMP in torch's CPU builds); the per-row loops live in flow_rows.h, which
// is compiled twice here -- a baseline build (whatever the compiler flags allow, SSE2 on x86-64)
// and an AVX2 build -- and one table of them is picked once per process from what the CPU
// reports (__builtin_cpu_supports), so AVX2 code never runs on a CPU without it and the build
// needs no -march flag. PROCPAINT_FLOW_ISA=baseline forces the baseline build (tests, A/B
// timing); torch.ops.procpaint.flow_cpu_isa() names the build in use.
//
// The loss never materializes an (N, D) temporary: each fixed-size chunk of rows reduces to one
// double, so extra memory is O(N / chunk) and the result does not depend on the thread count.
// rf_mse_with_grad (the training path) adds one (N, D) output, the loss's gradient w.r.t. pred,
// written in the same pass; its loss is bit-equal to rf_mse's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>

#include "flow/flow_checks.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FLOW_HAVE_AVX2_BUILD 1
#else
#define FLOW_HAVE_AVX2_BUILD 0
#endif

namespace procpaint::flow {
namespace {

// Rows per parallel task: ~32K elements, so small D still gets coarse tasks.
inline int64_t grain_rows(int64_t d) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1)); }
constexpr int64_t kCol = 256;  // column block of the per-row scratch buffers (stack, not heap)

// A strided (N, D) input: row i starts at p + i * ld, columns are contiguous.
template <typename T>
struct In {
  const T* p;
  int64_t ld;
  inline const T* row(int64_t i) const { return p + i * ld; }
};
template <typename T>
In<T> in_rows(const at::Tensor& x) { return {x.data_ptr<T>(), row_stride(x)}; }

// Per-token t: t[i] or t[index[i]]; the range of index was validated before the pass.
struct TimeView {
  const float* t;
  const int64_t* i64;
  const int32_t* i32;
  inline float operator()(int64_t i) const {
    return i64 ? t[i64[i]] : (i32 ? t[i32[i]] : t[i]);
  }
};

// One instruction set's row kernels (flow_rows.h), all for rows [b, e).
template <typename T>
struct RowKernels {
  void (*interp)(In<T>, In<T>, TimeView, T*, int64_t, int64_t, int64_t);
  void (*interp_bwd)(In<T>, In<T>, In<T>, TimeView, T*, T*, float*, int64_t, int64_t, int64_t);
  double (*mse)(In<T>, In<T>, In<T>, float*, float, int64_t, int64_t, int64_t);
  double (*mse_grad)(In<T>, In<T>, In<T>, float*, float, float, T*, int64_t, int64_t, int64_t);
  void (*mse_bwd)(In<T>, In<T>, In<T>, const float*, int64_t, float, T*, T*, T*, int64_t, int64_t,
                  int64_t);
  void (*euler)(const T*, const T*, const float*, int64_t, float, T*, int64_t, int64_t, int64_t);
};

namespace baseline {
#define FLOW_TARGET
#include "flow/flow_rows.h"
#undef FLOW_TARGET
}  // namespace baseline

#if FLOW_HAVE_AVX2_BUILD
namespace avx2 {
// AVX2 only, no "fma": see flow_rows.h (no contraction, same bits as the baseline build).
#define FLOW_TARGET __attribute__((target("avx2")))
#include "flow/flow_rows.h"
#undef FLOW_TARGET
}  // namespace avx2
#endif

enum class Isa { kBaseline, kAvx2 };

Isa detect_isa() {
  const char* force = std::getenv("PROCPAINT_FLOW_ISA");
  if (force && std::string_view(force) == "baseline") return Isa::kBaseline;
#if FLOW_HAVE_AVX2_BUILD
  __builtin_cpu_init();  // libgcc also checks that the OS saves YMM state before reporting avx2
  if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

Isa cpu_isa() {
  static const Isa isa = detect_isa();  // once per process (thread-safe static init)
  return isa;
}

template <typename T>
const RowKernels<T>& kernels() {
#if FLOW_HAVE_AVX2_BUILD
  static const RowKernels<T> k =
      cpu_isa() == Isa::kAvx2 ? avx2::row_kernels<T>() : baseline::row_kernels<T>();
#else
  static const RowKernels<T> k = baseline::row_kernels<T>();
#endif
  return k;
}

std::string flow_cpu_isa() { return cpu_isa() == Isa::kAvx2 ? "avx2" : "baseline"; }

template <typename F>
void dispatch_dtype(at::ScalarType st, const char* op, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", st);  // unreachable after the checks
  }
}

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
    PP_CHECK_INDEX(bad < 0, op, ": index[", bad, "] = ", static_cast<int64_t>(bad >= 0 ? p[bad] : 0),
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

// ------------------------------------------------------------------ rf_interpolate
at::Tensor rf_interpolate_cpu(const at::Tensor& clean_in, const at::Tensor& noise_in,
                              const at::Tensor& t, const c10::optional<at::Tensor>& index) {
  constexpr const char* op = "rf_interpolate";
  check_rf_interpolate(op, clean_in, noise_in, t, index);
  const int64_t n = clean_in.size(0), d = clean_in.size(1);
  at::Tensor clean = as_rows(clean_in), noise = as_rows(noise_in), t_keep, ix_keep;
  TimeView tv = make_time_view(op, t, index, t_keep, ix_keep);
  at::Tensor z = at::empty({n, d}, clean.options());  // (N, D)
  if (z.numel() == 0) return z;
  dispatch_dtype(clean.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    auto c = in_rows<T>(clean), nz = in_rows<T>(noise);
    T* out = z.data_ptr<T>();
    auto f = kernels<T>().interp;
    at::parallel_for(0, n, grain_rows(d), [&](int64_t b, int64_t e) { f(c, nz, tv, out, d, b, e); });
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_interpolate_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& clean_in, const at::Tensor& noise_in,
    const at::Tensor& t, const c10::optional<at::Tensor>& index, std::array<bool, 3> mask) {
  constexpr const char* op = "rf_interpolate_backward";
  check_rf_interpolate(op, clean_in, noise_in, t, index, &grad_in);
  const int64_t n = clean_in.size(0), d = clean_in.size(1);
  at::Tensor grad = as_rows(grad_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  at::Tensor t_keep, ix_keep;
  TimeView tv = make_time_view(op, t, index, t_keep, ix_keep);
  at::Tensor gc = mask[0] ? at::empty({n, d}, clean.options()) : empty0(clean);  // (N, D)
  at::Tensor gn = mask[1] ? at::empty({n, d}, clean.options()) : empty0(clean);  // (N, D)
  at::Tensor gt = mask[2] ? at::empty({n}, t.options()) : empty0(t);             // (N,) f32
  if (n == 0 || !(mask[0] || mask[1] || mask[2])) return {gc, gn, gt};
  dispatch_dtype(clean.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    auto g = in_rows<T>(grad), c = in_rows<T>(clean), nz = in_rows<T>(noise);
    T* pc = mask[0] ? gc.data_ptr<T>() : nullptr;
    T* pn = mask[1] ? gn.data_ptr<T>() : nullptr;
    float* pt = mask[2] ? gt.data_ptr<float>() : nullptr;
    auto f = kernels<T>().interp_bwd;
    at::parallel_for(0, n, grain_rows(d),
                     [&](int64_t b, int64_t e) { f(g, c, nz, tv, pc, pn, pt, d, b, e); });
  });
  return {gc, gn, gt};
}

// ------------------------------------------------------------------ rf_mse
// d(mean_D (pred - target)^2)/d pred = 2 (pred - target) / D, times 1/N for "mean".
inline float mse_grad_base(Reduction red, int64_t n, int64_t d) {
  return 2.0f / static_cast<float>(d) / (red == kMean ? static_cast<float>(n) : 1.0f);
}

// The loss of rf_mse; with grad defined ((N, D) contiguous, pred's dtype) the same pass also
// writes the loss's gradient w.r.t. pred (upstream grad 1) into it.
at::Tensor mse_forward(const char* op, Reduction red, const at::Tensor& pred_in,
                       const at::Tensor& clean_in, const at::Tensor& noise_in, at::Tensor grad) {
  const int64_t n = pred_in.size(0), d = pred_in.size(1);
  auto f32 = pred_in.options().dtype(at::kFloat);
  at::Tensor rows = red == kNone ? at::empty({n}, f32) : at::Tensor();  // (N,) only for "none"
  if (n == 0) {  // torch semantics: mean of nothing is nan, sum of nothing is 0
    if (red == kNone) return rows;
    return at::full({}, red == kMean ? std::numeric_limits<float>::quiet_NaN() : 0.0f, f32);
  }
  at::Tensor pred = as_rows(pred_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  const int64_t chunk = grain_rows(d);  // fixed by D only: deterministic whatever the threads
  const int64_t nchunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(nchunks);  // O(N / chunk) extra memory
  const float inv_d = 1.0f / static_cast<float>(d);
  const float base = mse_grad_base(red, n, d);
  dispatch_dtype(pred.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    auto p = in_rows<T>(pred), c = in_rows<T>(clean), nz = in_rows<T>(noise);
    float* out_rows = red == kNone ? rows.data_ptr<float>() : nullptr;
    T* g = grad.defined() ? grad.data_ptr<T>() : nullptr;
    const RowKernels<T>& k = kernels<T>();
    at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t q = cb; q < ce; ++q) {
        const int64_t b = q * chunk, e = std::min(n, (q + 1) * chunk);
        partial[q] = g ? k.mse_grad(p, c, nz, out_rows, inv_d, base, g, d, b, e)
                       : k.mse(p, c, nz, out_rows, inv_d, d, b, e);
      }
    });
  });
  if (red == kNone) return rows;
  double total = 0.0;
  for (double v : partial) total += v;  // fixed order
  total /= static_cast<double>(d);
  if (red == kMean) total /= static_cast<double>(n);
  return at::full({}, static_cast<float>(total), f32);
}

at::Tensor rf_mse_cpu(const at::Tensor& pred, const at::Tensor& clean, const at::Tensor& noise,
                      c10::string_view reduction) {
  constexpr const char* op = "rf_mse";
  const Reduction red = check_rf_mse(op, pred, clean, noise, reduction);
  return mse_forward(op, red, pred, clean, noise, at::Tensor());
}

// (loss, g): g (N, D) in pred's dtype = d loss / d pred for an upstream grad of 1, written in the
// pass that reduces the loss (read pred, clean, noise once; write g once).
std::tuple<at::Tensor, at::Tensor> rf_mse_with_grad_cpu(const at::Tensor& pred,
                                                        const at::Tensor& clean,
                                                        const at::Tensor& noise,
                                                        c10::string_view reduction) {
  constexpr const char* op = "rf_mse_with_grad";
  const Reduction red = check_rf_mse(op, pred, clean, noise, reduction);
  at::Tensor g = at::empty({pred.size(0), pred.size(1)}, pred.options());  // (N, D)
  at::Tensor loss = mse_forward(op, red, pred, clean, noise, g.numel() ? g : at::Tensor());
  return {loss, g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rf_mse_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& pred_in, const at::Tensor& clean_in,
    const at::Tensor& noise_in, c10::string_view reduction, std::array<bool, 3> mask) {
  constexpr const char* op = "rf_mse_backward";
  const Reduction red = check_rf_mse(op, pred_in, clean_in, noise_in, reduction, &grad_in);
  const int64_t n = pred_in.size(0), d = pred_in.size(1);
  at::Tensor pred = as_rows(pred_in), clean = as_rows(clean_in), noise = as_rows(noise_in);
  auto mk = [&](bool on) { return on ? at::empty({n, d}, pred.options()) : empty0(pred); };
  at::Tensor gp = mk(mask[0]), gc = mk(mask[1]), gn = mk(mask[2]);  // (N, D) each
  if (n == 0 || d == 0 || !(mask[0] || mask[1] || mask[2])) return {gp, gc, gn};
  at::Tensor g = grad_in.contiguous();
  const float* gptr = g.data_ptr<float>();
  const int64_t gstride = red == kNone ? 1 : 0;
  const float base = mse_grad_base(red, n, d);
  dispatch_dtype(pred.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    auto p = in_rows<T>(pred), c = in_rows<T>(clean), nz = in_rows<T>(noise);
    T* op_ = mask[0] ? gp.data_ptr<T>() : nullptr;
    T* oc = mask[1] ? gc.data_ptr<T>() : nullptr;
    T* on = mask[2] ? gn.data_ptr<T>() : nullptr;
    auto f = kernels<T>().mse_bwd;
    at::parallel_for(0, n, grain_rows(d), [&](int64_t b, int64_t e) {
      f(p, c, nz, gptr, gstride, base, op_, oc, on, d, b, e);
    });
  });
  return {gp, gc, gn};
}

// ------------------------------------------------------------------ euler_step
// x, v viewed as (N, D) with N = x.size(0); dt: scalar (dt_t == nullptr) or () / (N,) tensor.
at::Tensor euler_impl(const char* op, const at::Tensor& x_in, const at::Tensor& v_in, double dt,
                      const at::Tensor* dt_t) {
  check_euler(op, x_in, v_in, dt_t);
  const int64_t n = x_in.size(0);
  at::Tensor dtc = dt_t ? dt_t->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(x_in, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const int64_t d = x_in.numel() / n;  // x viewed as (N, D)
  at::Tensor x = x_in.contiguous().view({n, d}), v = v_in.contiguous().view({n, d});
  const float* dptr = dtc.defined() ? dtc.data_ptr<float>() : nullptr;
  const int64_t dstride = dtc.defined() && dtc.dim() == 1 ? 1 : 0;
  const float h = static_cast<float>(dt);
  dispatch_dtype(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data_ptr<T>();
    const T* pv = v.data_ptr<T>();
    T* po = out.data_ptr<T>();
    auto f = kernels<T>().euler;
    at::parallel_for(0, n, grain_rows(d),
                     [&](int64_t b, int64_t e) { f(px, pv, dptr, dstride, h, po, d, b, e); });
  });
  return out;
}

at::Tensor euler_step_cpu(const at::Tensor& x, const at::Tensor& v, double dt) {
  return euler_impl("euler_step", x, v, dt, nullptr);
}
at::Tensor euler_step_tensor_cpu(const at::Tensor& x, const at::Tensor& v, const at::Tensor& dt) {
  return euler_impl("euler_step", x, v, 0.0, &dt);
}

}  // namespace
}  // namespace procpaint::flow

TORCH_LIBRARY_IMPL(procpaint, CPU, m) {
  using namespace procpaint::flow;
  m.impl("rf_interpolate", &rf_interpolate_cpu);
  m.impl("rf_interpolate_backward", &rf_interpolate_backward_cpu);
  m.impl("rf_mse", &rf_mse_cpu);
  m.impl("rf_mse_with_grad", &rf_mse_with_grad_cpu);
  m.impl("rf_mse_backward", &rf_mse_backward_cpu);
  m.impl("euler_step", &euler_step_cpu);
  m.impl("euler_step.dt_tensor", &euler_step_tensor_cpu);
}

// No tensor arguments, so no backend key to dispatch on: the kernel is registered for every key.
TORCH_LIBRARY_IMPL(procpaint, CompositeExplicitAutograd, m) {
  m.impl("flow_cpu_isa", &procpaint::flow::flow_cpu_isa);
}
