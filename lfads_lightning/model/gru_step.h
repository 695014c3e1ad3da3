// The per-bin building blocks of kernels.cpp: the BLAS call, the vectorisable float32 exp,
// the sequence / tape views and one clipped-GRU step forward and backward. Included once, by
// kernels.cpp (one translation unit); split out only to keep each file readable.

#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*);
}

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// C[m, n] = beta * C + A[m, k] B[k, n], all row-major with row strides lda, ldb, ldc (the
// column-major BLAS computes C^T = B^T A^T).
template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
          T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const char no = 'N';
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  const int LA = static_cast<int>(lda), LB = static_cast<int>(ldb), LC = static_cast<int>(ldc);
  const T one = 1;
  if constexpr (std::is_same_v<T, float>)
    sgemm_(&no, &no, &N, &M, &K, &one, b, &LB, a, &LA, &beta, c, &LC);
  else
    dgemm_(&no, &no, &N, &M, &K, &one, b, &LB, a, &LA, &beta, c, &LC);
}

// exp for float32: Cephes' polynomial after the range reduction x = n ln2 + r, |r| <= ln2 / 2.
// Written so that gcc vectorises it without -ffast-math: round-to-nearest through the 1.5 * 2^23
// trick (floorf does not vectorise under the default -ftrapping-math) and 2^n built from bits.
inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (static_cast<int32_t>(n) + 127) << 23;
  return p * scale.f;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_poly(-x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline float tanh_(float x) { return 1.0f - 2.0f / (1.0f + exp_poly(2.0f * x)); }
inline double tanh_(double x) { return std::tanh(x); }

// A [T, B, W] sequence with unit inner stride (row stride sb and bin stride st may be anything).
template <typename T>
struct Seq {
  T* p = nullptr;
  int64_t st = 0, sb = 0;
  Seq() = default;
  explicit Seq(const Tensor& x) : p(x.data_ptr<T>()), st(x.stride(0)), sb(x.stride(1)) {
    TORCH_CHECK(x.dim() == 3 && (x.size(2) <= 1 || x.stride(2) == 1),
                "lfads kernels: a sequence needs shape [T, B, W] with unit stride in W");
  }
  explicit Seq(const OptTensor& x) : Seq() {
    if (x) *this = Seq(*x);
  }
  T* at(int64_t t) const { return p ? p + t * st : nullptr; }
};

template <typename T>
T* contiguous_ptr(const Tensor& x, const char* what) {
  TORCH_CHECK(x.is_contiguous(), "lfads kernels: ", what, " must be contiguous");
  return x.data_ptr<T>();
}

// One clipped-GRU recurrence's tape (contiguous buffers, see kernels.cpp's header). Without a
// backward to come (sampling), gate / cand / rh / pre may be one bin deep: scratch reused by
// every bin (time stride 0), so only the states h stream to memory.
template <typename T>
struct Tape {
  T *h, *gate, *cand, *rh, *pre;
  int64_t B, H, sg, sc;  // sg / sc: time strides of gate and of cand / rh / pre
  Tape(const Tensor& h_, const Tensor& gate_, const Tensor& cand_, const Tensor& rh_,
       const Tensor& pre_)
      : h(contiguous_ptr<T>(h_, "h")), gate(contiguous_ptr<T>(gate_, "gate")),
        cand(contiguous_ptr<T>(cand_, "cand")), rh(contiguous_ptr<T>(rh_, "rh")),
        pre(contiguous_ptr<T>(pre_, "pre")), B(gate_.size(-2)), H(cand_.size(-1)),
        sg(gate_.size(0) == 1 ? 0 : B * 2 * H), sc(cand_.size(0) == 1 ? 0 : B * H) {
    TORCH_CHECK(rh_.size(0) == cand_.size(0) && pre_.size(0) == cand_.size(0),
                "lfads kernels: cand, rh and pre must have the same number of bins");
  }
  T* h_at(int64_t t) const { return h + t * B * H; }
  T* gate_at(int64_t t) const { return gate + t * sg; }
  T* cand_at(int64_t t) const { return cand + t * sc; }
  T* rh_at(int64_t t) const { return rh + t * sc; }
  T* pre_at(int64_t t) const { return pre + t * sc; }
};

// Additive inputs of one bin's pre-activations: x1 rows (stride ld1) plus optional x2 rows.
template <typename T>
struct Inputs {
  const T* x1;
  int64_t ld1;
  const T* x2;
  int64_t ld2;
};

// The elementwise passes: noexcept functions on raw pointers (gcc vectorises them; in a function
// that also holds Tensors it refuses: "statement can throw an exception").
template <typename T>
void gates_pass(T* __restrict g, const T* __restrict x1, int64_t ld1, const T* __restrict x2,
                int64_t ld2, const T* __restrict h, T* __restrict rh, int64_t B,
                int64_t H) noexcept {
  for (int64_t b = 0; b < B; ++b) {
    T* __restrict gr = g + b * 2 * H;
    const T* __restrict a = x1 + b * ld1;
    if (x2) {
      const T* __restrict c = x2 + b * ld2;
      for (int64_t j = 0; j < 2 * H; ++j) gr[j] = sigmoid(gr[j] + a[j] + c[j]);
    } else {
      for (int64_t j = 0; j < 2 * H; ++j) gr[j] = sigmoid(gr[j] + a[j]);
    }
    for (int64_t j = 0; j < H; ++j) rh[b * H + j] = gr[j] * h[b * H + j];
  }
}

template <typename T>
void candidate_pass(const T* __restrict g, const T* __restrict x1, int64_t ld1,
                    const T* __restrict x2, int64_t ld2, const T* __restrict h, T* __restrict c,
                    T* __restrict n, T* __restrict h_next, int64_t B, int64_t H, T clip) noexcept {
  for (int64_t b = 0; b < B; ++b) {
    const T* __restrict u = g + b * 2 * H + H;
    const T* __restrict a = x1 + b * ld1 + 2 * H;
    const T* __restrict e = x2 ? x2 + b * ld2 + 2 * H : a;  // unused when x2 is null
    const T scale2 = x2 ? T(1) : T(0);
    for (int64_t j = 0; j < H; ++j) {
      const int64_t i = b * H + j;
      const T cj = tanh_(c[i] + a[j] + scale2 * e[j]);
      c[i] = cj;
      const T nj = cj + u[j] * (h[i] - cj);
      n[i] = nj;
      h_next[i] = std::min(std::max(nj, -clip), clip);
    }
  }
}

// dx_c, dx_u and the carry dn * u (+ extra) of one backward bin; see gru_step_back.
template <typename T>
void back_gates(const T* __restrict g, const T* __restrict c, const T* __restrict n,
                const T* __restrict h, const T* __restrict d, const T* __restrict extra,
                int64_t ld_extra, T* __restrict dx, T* __restrict carry, int64_t B, int64_t H,
                T clip) noexcept {
  for (int64_t b = 0; b < B; ++b) {
    const T* __restrict u = g + b * 2 * H + H;
    const T* __restrict ex = extra ? extra + b * ld_extra : nullptr;
    T* __restrict row = dx + b * 3 * H;
    for (int64_t j = 0; j < H; ++j) {
      const int64_t i = b * H + j;
      const T dn = std::abs(n[i]) <= clip ? d[i] : T(0);
      const T uj = u[j], cj = c[i];
      row[2 * H + j] = dn * (T(1) - uj) * (T(1) - cj * cj);
      row[H + j] = dn * (h[i] - cj) * uj * (T(1) - uj);
      carry[i] = dn * uj + (ex ? ex[j] : T(0));
    }
  }
}

// dx_r and the carry's reset term drh * r of one backward bin.
template <typename T>
void back_reset(const T* __restrict g, const T* __restrict h, const T* __restrict drh,
                T* __restrict dx, T* __restrict carry, int64_t B, int64_t H) noexcept {
  for (int64_t b = 0; b < B; ++b) {
    const T* __restrict r = g + b * 2 * H;
    T* __restrict row = dx + b * 3 * H;
    for (int64_t j = 0; j < H; ++j) {
      const int64_t i = b * H + j;
      row[j] = drh[i] * h[i] * r[j] * (T(1) - r[j]);
      carry[i] += drh[i] * r[j];
    }
  }
}

// Forward of bin t: h[t+1] from h[t]; the projected input of the bin is x1 (+ x2), [B, 3H] rows.
template <typename T>
void gru_step(const Tape<T>& tp, int64_t t, Inputs<T> x, const T* wg, const T* wc, T clip) {
  const int64_t B = tp.B, H = tp.H;
  T *h = tp.h_at(t), *g = tp.gate_at(t), *rh = tp.rh_at(t), *c = tp.cand_at(t);
  gemm<T>(B, 2 * H, H, h, H, wg, 2 * H, T(0), g, 2 * H);
  gates_pass<T>(g, x.x1, x.ld1, x.x2, x.ld2, h, rh, B, H);
  gemm<T>(B, H, H, rh, H, wc, H, T(0), c, H);
  candidate_pass<T>(g, x.x1, x.ld1, x.x2, x.ld2, h, c, tp.pre_at(t), tp.h_at(t + 1), B, H, clip);
}

// Backward of bin t. dh: gradient w.r.t. h[t+1] ([B, H]); extra: gradient arriving directly at
// h[t] (rows of stride ld_extra, or null). Writes dx[t] = [dx_r, dx_u, dx_c] and dh_prev.
//   dn = dh [|n| <= k];  dx_c = dn (1 - u)(1 - c^2);  dx_u = dn (h - c) u (1 - u)
//   drh = dx_c Wc^T;     dx_r = drh h r (1 - r);      dh_prev = dn u + drh r + [dx_r, dx_u] Wg^T
template <typename T>
void gru_step_back(const Tape<T>& tp, int64_t t, const T* dh, const T* extra, int64_t ld_extra,
                   T* dx, const T* wg_t, const T* wc_t, T clip, T* drh, T* dh_prev) {
  const int64_t B = tp.B, H = tp.H;
  const T *g = tp.gate_at(t), *h = tp.h_at(t);
  back_gates<T>(g, tp.cand_at(t), tp.pre_at(t), h, dh, extra, ld_extra, dx, dh_prev, B, H, clip);
  gemm<T>(B, H, H, dx + 2 * H, 3 * H, wc_t, H, T(0), drh, H);
  back_reset<T>(g, h, drh, dx, dh_prev, B, H);
  gemm<T>(B, H, 2 * H, dx, 3 * H, wg_t, H, T(1), dh_prev, H);
}

}  // namespace
