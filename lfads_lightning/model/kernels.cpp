// Native CPU loops of the LFADS fast path (built and loaded by lfads_lightning/model/native.py).
//
// The same equations as the torch-op loops of fused.py (see the docstrings there), with the
// per-bin elementwise work of a GRU step fused into two passes over [B, H] and the matmuls
// called straight in the BLAS that torch links (sgemm_ / dgemm_ of libtorch_cpu). The torch-op
// loops pay the interpreter and the dispatcher ~10 times per GRU step (180 decoder bins and 560
// encoder steps per batch); here a step is 2-3 GEMM calls and 2 plain loops. Only the loops
// live here: buffer allocation, the all-bins weight-gradient GEMMs and autograd stay in fused.py.
//
// Layout: sequences are time-major [T, B, W] with unit stride in W and any row / bin strides
// (a bias expanded over bins has stride 0); the tape buffers (h [T+1, B, H], gate [T, B, 2H],
// cand, rh, pre [T, B, H], dx [T, B, 3H]) and the weights are contiguous. The projected inputs
// are not added into the GEMM outputs beforehand: the elementwise passes add them, so no copy
// precedes a GEMM. float32 uses a polynomial exp (Cephes, ~1 ulp) that vectorises; float64
// uses std::exp / std::tanh (the float64 equality tests compare to 1e-10).
//
// gru_step.h holds the per-bin building blocks; this file the loops over bins and the ops.

#include "gru_step.h"

namespace {

// ------------------------------------------------------------------- encoders / autonomous gen

void gru_forward(const Tensor& x, const Tensor& h, const Tensor& gate, const Tensor& cand,
                 const Tensor& rh, const Tensor& pre, const Tensor& wg_, const Tensor& wc_,
                 double clip) {
  // x [G, T, B, 3H] (unit inner stride); buffers [G, T(+1), B, *]; wg [G, H, 2H], wc [G, H, H].
  const int64_t groups = gate.size(0), steps = h.size(1) - 1;
  const Tensor wg = wg_.contiguous(), wc = wc_.contiguous();
  AT_DISPATCH_FLOATING_TYPES(gate.scalar_type(), "lfads_gru_forward", [&] {
    using T = scalar_t;
    for (int64_t grp = 0; grp < groups; ++grp) {
      const Tape<T> tp(h[grp], gate[grp], cand[grp], rh[grp], pre[grp]);
      const Seq<T> xs(x[grp]);
      const T *w_g = wg[grp].data_ptr<T>(), *w_c = wc[grp].data_ptr<T>();
      for (int64_t t = 0; t < steps; ++t)
        gru_step<T>(tp, t, {xs.at(t), xs.sb, nullptr, 0}, w_g, w_c, static_cast<T>(clip));
    }
  });
}

Tensor gru_backward(const Tensor& g_states, const Tensor& h, const Tensor& gate,
                    const Tensor& cand, const Tensor& rh, const Tensor& pre, const Tensor& wg_t,
                    const Tensor& wc_t, double clip, const Tensor& dx) {
  // g_states [G, T, B, H] (unit inner stride); wg_t [G, 2H, H], wc_t [G, H, H] (contiguous);
  // fills dx [G, T, B, 3H]; returns the gradient w.r.t. h0 [G, B, H].
  const int64_t groups = gate.size(0), steps = gate.size(1), B = gate.size(2), H = cand.size(3);
  TORCH_CHECK(h.size(1) == steps + 1 && cand.size(1) == steps, "lfads kernels: backward needs the full tape");
  Tensor dh0 = at::empty({groups, B, H}, gate.options());
  AT_DISPATCH_FLOATING_TYPES(gate.scalar_type(), "lfads_gru_backward", [&] {
    using T = scalar_t;
    Tensor bufs = at::empty({3, B, H}, gate.options());
    T* drh = bufs.data_ptr<T>();
    for (int64_t grp = 0; grp < groups; ++grp) {
      const Tape<T> tp(h[grp], gate[grp], cand[grp], rh[grp], pre[grp]);
      const Seq<T> gs(g_states[grp]);
      T* dxp = contiguous_ptr<T>(dx[grp], "dx");
      const T *w_g = contiguous_ptr<T>(wg_t[grp], "wg_t"), *w_c = contiguous_ptr<T>(wc_t[grp], "wc_t");
      T *dh = drh + B * H, *next = drh + 2 * B * H;
      for (int64_t b = 0; b < B; ++b)
        std::copy(gs.at(steps - 1) + b * gs.sb, gs.at(steps - 1) + b * gs.sb + H, dh + b * H);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const T* ex = t > 0 ? gs.at(t - 1) : nullptr;
        gru_step_back<T>(tp, t, dh, ex, gs.sb, dxp + t * B * 3 * H, w_g, w_c,
                         static_cast<T>(clip), drh, next);
        std::swap(dh, next);
      }
      std::copy(dh, dh + B * H, dh0[grp].data_ptr<T>());
    }
  });
  return dh0;
}

// ---------------------------------------------------------------------------- decoder loop
// Argument lists follow fused._DecoderScan (see its docstring for the equations).

template <typename T>
struct DecoderWeights {  // forward: (W_f, con W_g, con W_c, W_o^T, b_o, W_u, gen W_g, gen W_c, W_fac^T)
  std::vector<Tensor> keep;  // contiguous copies where needed (kept alive)
  std::vector<const T*> p;
  explicit DecoderWeights(const std::vector<Tensor>& w) {
    for (const Tensor& x : w) keep.push_back(x.contiguous());
    for (const Tensor& x : keep) p.push_back(x.data_ptr<T>());
  }
};

template <typename T>
void co_sample_pass(T* __restrict o, const T* __restrict bias, T* __restrict v, T* __restrict sd,
                    T* __restrict u, const T* __restrict e, int64_t B, int64_t co,
                    T vmin) noexcept {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < 2 * co; ++j) o[b * 2 * co + j] += bias[j];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < co; ++j) {
      const T vj = std::exp(o[b * 2 * co + co + j]) + vmin;
      v[b * co + j] = vj;
      if (e) {
        const T s = std::sqrt(vj);
        sd[b * co + j] = s;
        u[b * co + j] = o[b * 2 * co + j] + s * e[b * co + j];
      }
    }
}

template <typename T>
void mask_pass(const T* __restrict x, const T* __restrict m, T* __restrict y, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * m[i];
}

void decoder_forward(const Tensor& con_proj, const Tensor& gen_base, const Tensor& con_h,
                     const Tensor& con_gate, const Tensor& con_cand, const Tensor& con_rh,
                     const Tensor& con_pre, const Tensor& gen_h, const Tensor& gen_gate,
                     const Tensor& gen_cand, const Tensor& gen_rh, const Tensor& gen_pre,
                     const Tensor& fac, const Tensor& a, const Tensor& gm, const Tensor& out,
                     const Tensor& var, const OptTensor& std_, const Tensor& u,
                     const std::vector<Tensor>& w, const OptTensor& noise,
                     const OptTensor& mask_fac, const OptTensor& mask_gen, double clip,
                     double var_min) {
  const int64_t steps = con_proj.size(0), B = con_proj.size(1);
  const int64_t C = con_cand.size(2), G = gen_cand.size(2), F = fac.size(2), co = var.size(2);
  AT_DISPATCH_FLOATING_TYPES(con_proj.scalar_type(), "lfads_decoder_forward", [&] {
    using T = scalar_t;
    const T k = static_cast<T>(clip), vmin = static_cast<T>(var_min);
    const Tape<T> con(con_h, con_gate, con_cand, con_rh, con_pre);
    const Tape<T> gen(gen_h, gen_gate, gen_cand, gen_rh, gen_pre);
    const DecoderWeights<T> wt(w);
    const auto& W = wt.p;
    const Seq<T> cp(con_proj), gb(gen_base), us(u), sd(std_), ns(noise), mf(mask_fac), mg(mask_gen);
    T *fa = contiguous_ptr<T>(fac, "fac"), *ap = contiguous_ptr<T>(a, "a");
    T *gmp = contiguous_ptr<T>(gm, "gm"), *op = contiguous_ptr<T>(out, "out");
    T* vp = contiguous_ptr<T>(var, "var");
    Tensor scratch = at::empty({B, 3 * std::max(C, G)}, con_proj.options());
    T* xs = scratch.data_ptr<T>();
    const int64_t sa = a.size(0) == 1 ? 0 : B * F, sgm = gm.size(0) == 1 ? 0 : B * G;
    for (int64_t t = 0; t < steps; ++t) {
      T* a_t = ap + t * sa;
      if (mf.p) mask_pass<T>(fa + t * B * F, mf.at(t), a_t, B * F);
      gemm<T>(B, 3 * C, F, a_t, F, W[0], 3 * C, T(0), xs, 3 * C);
      gru_step<T>(con, t, {cp.at(t), cp.sb, xs, 3 * C}, W[1], W[2], k);
      T* o = op + t * B * 2 * co;
      gemm<T>(B, 2 * co, C, con.h_at(t + 1), C, W[3], 2 * co, T(0), o, 2 * co);
      co_sample_pass<T>(o, W[4], vp + t * B * co, sd.at(t), us.at(t), ns.at(t), B, co, vmin);
      gemm<T>(B, 3 * G, co, us.at(t), us.sb, W[5], 3 * G, T(0), xs, 3 * G);
      gru_step<T>(gen, t, {gb.at(t), gb.sb, xs, 3 * G}, W[6], W[7], k);
      T* gm_t = gmp + t * sgm;
      if (mg.p) mask_pass<T>(gen.h_at(t + 1), mg.at(t), gm_t, B * G);
      gemm<T>(B, F, G, gm_t, G, W[8], F, T(0), fa + (t + 1) * B * F, F);
    }
  });
}

// dfac_t = G_f,t + carry * mf_{t+1} (carry = dx_con,t+1 W_f^T; none at the last bin).
template <typename T>
void factor_grad_pass(const T* __restrict gf, int64_t ld, const T* __restrict carry,
                      const T* __restrict mf, T* __restrict df, int64_t B, int64_t F) noexcept {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < F; ++j) {
      const int64_t i = b * F + j;
      T cf = carry ? carry[i] : T(0);
      if (mf) cf *= mf[i];
      df[i] = gf[b * ld + j] + cf;
    }
}

// dm = G_m + du, dlv = (G_v + du eps / (2 std)) exp(lv), du = G_u + dx_gen W_u^T.
template <typename T>
void co_grad_pass(const T* __restrict du, const T* __restrict o, const T* __restrict sd,
                  const T* __restrict e, const T* gm, int64_t ldm, const T* gv, int64_t ldv,
                  const T* gu, int64_t ldu, T* __restrict dout, int64_t B, int64_t co) noexcept {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < co; ++j) {
      const int64_t i = b * co + j;
      const T exp_lv = std::exp(o[b * 2 * co + co + j]);
      const T du_i = du[i] + gu[b * ldu + j];
      dout[b * 2 * co + j] = gm[b * ldm + j] + du_i;
      T dlv = gv[b * ldv + j] * exp_lv;
      if (e) dlv += du_i * (T(0.5) * e[i] / sd[i] * exp_lv);
      dout[b * 2 * co + co + j] = dlv;
    }
}

std::vector<Tensor> decoder_backward(
    const Tensor& g_gen, const Tensor& g_fac, const Tensor& g_mean, const Tensor& g_var,
    const Tensor& g_u, const Tensor& con_h, const Tensor& con_gate, const Tensor& con_cand,
    const Tensor& con_rh, const Tensor& con_pre, const Tensor& gen_h, const Tensor& gen_gate,
    const Tensor& gen_cand, const Tensor& gen_rh, const Tensor& gen_pre, const Tensor& out,
    const OptTensor& std_, const OptTensor& noise, const OptTensor& mask_fac,
    const OptTensor& mask_gen, const std::vector<Tensor>& w_t, const Tensor& con_dx,
    const Tensor& gen_dx, const Tensor& dfac, const Tensor& dout, double clip) {
  // w_t = (W_f^T, con W_g^T, con W_c^T, W_o, W_u^T, gen W_g^T, gen W_c^T, W_fac): transposes of
  // the forward weights. Fills con_dx, gen_dx, dfac [T, B, F], dout [T, B, 2 co]; returns
  // (d con_h0, d gen_h0, d fac0).
  const int64_t steps = g_mean.size(0), B = g_mean.size(1);
  const int64_t C = con_cand.size(2), G = gen_cand.size(2), F = dfac.size(2), co = g_mean.size(2);
  TORCH_CHECK(con_gate.size(0) == steps && gen_cand.size(0) == steps,
              "lfads kernels: backward needs the full tape");
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(g_mean.scalar_type(), "lfads_decoder_backward", [&] {
    using T = scalar_t;
    const T k = static_cast<T>(clip);
    const Tape<T> con(con_h, con_gate, con_cand, con_rh, con_pre);
    const Tape<T> gen(gen_h, gen_gate, gen_cand, gen_rh, gen_pre);
    const DecoderWeights<T> wt(w_t);
    const auto& W = wt.p;
    const Seq<T> sgg(g_gen), sgf(g_fac), sgm(g_mean), sgv(g_var), sgu(g_u);
    const Seq<T> sd(std_), ns(noise), mf(mask_fac), mg(mask_gen);
    T *cdx = contiguous_ptr<T>(con_dx, "con_dx"), *gdx = contiguous_ptr<T>(gen_dx, "gen_dx");
    T *dfp = contiguous_ptr<T>(dfac, "dfac"), *dop = contiguous_ptr<T>(dout, "dout");
    const T* op = contiguous_ptr<T>(out, "out");
    Tensor d_con0 = at::zeros({B, C}, out.options()), d_gen0 = at::empty({B, G}, out.options());
    Tensor d_fac0 = at::empty({B, F}, out.options());
    Tensor bufs = at::empty({3 * B * G + 2 * B * C + B * co}, out.options());
    T *d_gen = d_gen0.data_ptr<T>(), *d_gen_next = bufs.data_ptr<T>(), *g_drh = d_gen_next + B * G;
    T *d_gm = g_drh + B * G, *d_con = d_con0.data_ptr<T>(), *d_con_next = d_gm + B * G;
    T *c_drh = d_con_next + B * C, *du = c_drh + B * C, *carry = d_fac0.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b)
      std::copy(sgg.at(steps - 1) + b * sgg.sb, sgg.at(steps - 1) + b * sgg.sb + G, d_gen + b * G);
    for (int64_t t = steps - 1; t >= 0; --t) {
      T* df = dfp + t * B * F;
      const bool last = t + 1 == steps;
      factor_grad_pass<T>(sgf.at(t), sgf.sb, last ? nullptr : carry, last ? nullptr : mf.at(t + 1),
                          df, B, F);
      if (mg.p) {
        gemm<T>(B, G, F, df, F, W[7], G, T(0), d_gm, G);
        const T* m = mg.at(t);
        for (int64_t i = 0; i < B * G; ++i) d_gen[i] += d_gm[i] * m[i];
      } else {
        gemm<T>(B, G, F, df, F, W[7], G, T(1), d_gen, G);
      }
      T* gdx_t = gdx + t * B * 3 * G;
      gru_step_back<T>(gen, t, d_gen, t > 0 ? sgg.at(t - 1) : nullptr, sgg.sb, gdx_t, W[5], W[6],
                       k, g_drh, d_gen_next);
      std::swap(d_gen, d_gen_next);
      gemm<T>(B, co, 3 * G, gdx_t, 3 * G, W[4], co, T(0), du, co);
      T* dout_t = dop + t * B * 2 * co;
      co_grad_pass<T>(du, op + t * B * 2 * co, sd.at(t), ns.at(t), sgm.at(t), sgm.sb, sgv.at(t),
                      sgv.sb, sgu.at(t), sgu.sb, dout_t, B, co);
      gemm<T>(B, C, 2 * co, dout_t, 2 * co, W[3], C, T(1), d_con, C);
      T* cdx_t = cdx + t * B * 3 * C;
      gru_step_back<T>(con, t, d_con, nullptr, 0, cdx_t, W[1], W[2], k, c_drh, d_con_next);
      std::swap(d_con, d_con_next);
      gemm<T>(B, F, 3 * C, cdx_t, 3 * C, W[0], F, T(0), carry, F);
    }
    if (mf.p)
      for (int64_t i = 0; i < B * F; ++i) carry[i] *= mf.at(0)[i];
    // the running buffers may have ended in the scratch block: copy out what is returned
    Tensor con_out = at::empty({B, C}, out.options()), gen_out = at::empty({B, G}, out.options());
    std::copy(d_con, d_con + B * C, con_out.data_ptr<T>());
    std::copy(d_gen, d_gen + B * G, gen_out.data_ptr<T>());
    result = {con_out, gen_out, d_fac0};
  });
  return result;
}

// ---------------------------------------------------------------------------- dropout masks
// Philox-4x32-10 (Salmon et al. 2011, the generator of torch's CUDA backend): counter-based, so
// every block of 4 mask entries is computed independently and the loop vectorises. One call of
// torch's own generator supplies the 64-bit key, so torch.manual_seed makes masks reproducible.

inline void philox_round(uint32_t* c, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
  const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
  c[1] = static_cast<uint32_t>(p1);
  c[3] = static_cast<uint32_t>(p0);
  c[0] = n0;
  c[2] = n2;
}

// The 4 outputs of block n under a 64-bit key.
inline void philox_block(int64_t n, uint64_t key, uint32_t* c) {
  c[0] = static_cast<uint32_t>(n);
  c[1] = static_cast<uint32_t>(static_cast<uint64_t>(n) >> 32);
  c[2] = c[3] = 0u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r) {
    philox_round(c, k0, k1);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

template <typename T>
inline T keep_or_drop(uint32_t bits, float p, T keep) {  // uniform on [0, 1) with 24 bits
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f) >= p ? keep : T(0);
}

template <typename T>
void mask_blocks(T* __restrict out, int64_t blocks, uint64_t key, float p, T keep) noexcept {
  for (int64_t n = 0; n < blocks; ++n) {
    uint32_t c[4];
    philox_block(n, key, c);
    for (int j = 0; j < 4; ++j) out[4 * n + j] = keep_or_drop<T>(c[j], p, keep);
  }
}

// Fills `out` (contiguous, float32/float64) with an inverted-dropout mask: 1 / (1 - p) with
// probability 1 - p, else 0.
void dropout_mask(const Tensor& out, double p, int64_t seed) {
  const int64_t n = out.numel(), blocks = n / 4;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lfads_dropout_mask", [&] {
    using T = scalar_t;
    T* o = contiguous_ptr<T>(out, "dropout mask");
    const T keep = static_cast<T>(1.0 / (1.0 - p));
    const uint64_t key = static_cast<uint64_t>(seed);
    mask_blocks<T>(o, blocks, key, static_cast<float>(p), keep);
    uint32_t c[4];
    philox_block(blocks, key, c);
    for (int64_t i = 4 * blocks; i < n; ++i)
      o[i] = keep_or_drop<T>(c[i - 4 * blocks], static_cast<float>(p), keep);
  });
}

// ------------------------------------------------------------------- Poisson constant term
// lgamma(x + 1) for spike counts: small non-negative integers are looked up in a table (the
// values std::lgamma gives, rounded to T once), anything else goes to std::lgamma.

template <typename T>
void log_factorial_pass(const T* __restrict x, T* __restrict y, int64_t n,
                        const T* __restrict table, int64_t size) noexcept {
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    const int64_t k = static_cast<int64_t>(v);
    y[i] = (v >= T(0) && v < static_cast<T>(size) && static_cast<T>(k) == v)
               ? table[k]
               : static_cast<T>(std::lgamma(static_cast<double>(v) + 1.0));
  }
}

Tensor log_factorial(const Tensor& x_) {
  const Tensor x = x_.contiguous();
  Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lfads_log_factorial", [&] {
    using T = scalar_t;
    constexpr int64_t size = 256;
    T table[size];
    for (int64_t k = 0; k < size; ++k) table[k] = static_cast<T>(std::lgamma(k + 1.0));
    log_factorial_pass<T>(x.data_ptr<T>(), y.data_ptr<T>(), x.numel(), table, size);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(lfads_kernels, m) {
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("decoder_forward", &decoder_forward);
  m.def("decoder_backward", &decoder_backward);
  m.def("dropout_mask", &dropout_mask);
  m.def("log_factorial", &log_factorial);
}
