// Fused transposed convolution + crop on CPU: forward, backward-input, backward-weight.
//
// Only the cropped window is ever computed. Two paths:
// * channel-diagonal weight (FCN's bilinear upsampling, any depthwise weight): output
//   (n, c, o) reads input channel c through its few kernel taps only. One filter on the
//   whole diagonal (FCN's) runs on separable.h's 1-D map loops (uniform_diagonal);
//   per-channel filters on a direct gather (diagonal_gather). Every output element is
//   written by one task in a fixed order (no atomics, same bits every run);
// * any other weight: a sub-pixel (phase) decomposition into plain GEMMs (AVX-512
//   kernels here, else ATen's mm) over the blocks under the crop window only
//   (PhaseAxis below).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "deconv/args.h"
#include "deconv/const_grad.h"
#include "common/isa.h"
#include "common/separable.h"

namespace fcn_kernels {
namespace {

// Taps along one axis in CSR form: for position a, pairs (k[j], idx[j]) for j in
// [start[a], start[a+1]).
struct Taps {
  std::vector<int64_t> start{0}, k, idx;
  void add(int64_t kk, int64_t i) { k.push_back(kk); idx.push_back(i); }
  void close() { start.push_back(static_cast<int64_t>(k.size())); }
};

// Forward direction: cropped output o reads input i through tap k in [k0, k1).
Taps source_taps(int64_t out, int64_t off, int64_t k0, int64_t k1, int64_t s, int64_t p,
                 int64_t d, int64_t in) {
  Taps t;
  for (int64_t o = 0; o < out; ++o) {
    int64_t step = 1;
    const int64_t first = deconv_first_tap(o + off, s, p, d, step);
    if (first >= 0) {
      // first + m*step >= k0
      int64_t k = first + (k0 > first ? (k0 - first + step - 1) / step * step : 0);
      for (; k < k1; k += step) {
        const int64_t i = deconv_source(o + off, k, s, p, d, in);
        if (i >= 0) t.add(k, i);
      }
    }
    t.close();
  }
  return t;
}

// Backward direction: input i is read by cropped output o through tap k.
Taps target_taps(int64_t in, int64_t K, int64_t s, int64_t p, int64_t d, int64_t off,
                 int64_t out) {
  Taps t;
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t o = deconv_target(i, k, s, p, d, off, out);
      if (o >= 0) t.add(k, o);
    }
    t.close();
  }
  return t;
}

inline int64_t grain(int64_t row_elems) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_elems));
}

// FCN's bilinear weight is one filter f repeated along the channel diagonal ("uniform").
// Then the transposed convolution needs no per-channel weights and runs on the 1-D map
// loops of separable.h (vectorised, compiled per ISA) instead of a 2-D tap loop:
// * f = u v^T (rank 1, FCN's weight in float32/float64): separable, columns then rows,
//   each input row filtered once and blended into the output rows that read it;
// * any other f (e.g. that weight rounded to bfloat16 for k >= 32, whose products no
//   longer fit 8 bits): each output row sums its row taps (ky, iy), input row iy
//   filtered along the row by f[ky, :].
template <typename acc_t>
bool is_uniform(const acc_t* wd, int64_t C, int64_t K) {
  for (int64_t e = K; e < C * K; ++e) {
    if (!(wd[e] == wd[e % K])) return false;  // NaN compares unequal: direct path
  }
  return true;
}

// f (KH, KW) == u v^T to within 4 ulps per element (u v^T comes from dividing by a pivot,
// so exact equality is not available). Non-finite filters are refused.
template <typename acc_t>
bool rank1(const acc_t* f, int64_t KH, int64_t KW, std::vector<acc_t>& u, std::vector<acc_t>& v) {
  int64_t piv = 0;
  for (int64_t e = 1; e < KH * KW; ++e) {
    if (std::abs(f[e]) > std::abs(f[piv])) piv = e;
  }
  const acc_t m = f[piv];
  if (!std::isfinite(m)) return false;
  u.resize(KH);
  v.resize(KW);
  for (int64_t i = 0; i < KH; ++i) u[i] = f[i * KW + piv % KW];
  for (int64_t j = 0; j < KW; ++j) v[j] = m == acc_t(0) ? acc_t(0) : f[piv / KW * KW + j] / m;
  const acc_t tol = 4 * std::numeric_limits<acc_t>::epsilon();
  for (int64_t i = 0; i < KH; ++i) {
    for (int64_t j = 0; j < KW; ++j) {
      if (!(std::abs(f[i * KW + j] - u[i] * v[j]) <= tol * std::abs(f[i * KW + j]))) return false;
    }
  }
  return true;
}

// Taps (k, index) along one axis weighted by the 1-D filter f[k], as a separable.h map.
template <typename acc_t>
Csr<acc_t> weighted_map(const Taps& t, const acc_t* f) {
  Csr<acc_t> m;
  for (size_t a = 0; a + 1 < t.start.size(); ++a) {
    for (int64_t j = t.start[a]; j < t.start[a + 1]; ++j) m.add(t.idx[j], f[t.k[j]]);
    m.close_row();
  }
  m.close();
  return m;
}

// The non-rank-1 uniform case: out[p, a] = sum over row taps (ky, iy) of a of
// Mw[ky] in[p, iy], with Mw[ky] = the column taps weighted by f[ky, :].
template <typename scalar_t, typename Planar>
void uniform_rows(const scalar_t* in, scalar_t* out, int64_t P, int64_t IH, int64_t IW,
                  int64_t OH, int64_t OW, int64_t V, const Taps& th,
                  const std::vector<Csr<at::opmath_type<scalar_t>>>& mw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = OW * V;
  // Grain from the work per row (its row taps times each column's taps), not its
  // length: a k64 s32 backward row sums 64 filtered rows of 16 elements each.
  const int64_t taps = std::max<int64_t>(1, static_cast<int64_t>(th.k.size()) / std::max<int64_t>(1, OH)) *
                       std::max<int64_t>(1, static_cast<int64_t>(mw[0].index.size()) / std::max<int64_t>(1, OW));
  at::parallel_for(0, P * OH, grain(row * taps), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> h(row), acc(row, acc_t(0));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / OH, a = r % OH;
      if (th.start[a] == th.start[a + 1]) std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t j = th.start[a]; j < th.start[a + 1]; ++j) {
        const Csr<acc_t>& m = mw[th.k[j]];
        sep::hpass_isa<scalar_t, Planar>(in + (p * IH + th.idx[j]) * IW * V, h.data(), OW, V,
                                         m.start.data(), m.index.data(), m.weight.data(),
                                         m.two_taps);
        sep::axpy_isa<acc_t>(acc.data(), h.data(), acc_t(1), row, j == th.start[a]);
      }
      sep::store_isa<scalar_t>(out + r * row, acc.data(), row);
    }
  });
}

// Runs the uniform-filter paths (forward: th/tw are source taps, in = x; backward-input:
// target taps, in = grad_output). False when the diagonal filters differ.
template <typename scalar_t>
bool uniform_diagonal(const at::Tensor& in, at::Tensor& out, int64_t P, int64_t V,
                      const at::Tensor& wd, const Taps& th, const Taps& tw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t KH = wd.size(1), KW = wd.size(2);
  const acc_t* f = wd.const_data_ptr<acc_t>();
  if (!is_uniform(f, wd.size(0), KH * KW)) return false;
  std::vector<acc_t> u, v;
  if (rank1(f, KH, KW, u, v)) {
    separable_apply<scalar_t>(in, out, P, V, weighted_map(th, u.data()),
                              weighted_map(tw, v.data()));
    return true;
  }
  std::vector<Csr<acc_t>> mw;
  for (int64_t ky = 0; ky < KH; ++ky) mw.push_back(weighted_map(tw, f + ky * KW));
  with_planar(V, [&](auto planar) {
    uniform_rows<scalar_t, decltype(planar)>(in.const_data_ptr<scalar_t>(),
                                             out.mutable_data_ptr<scalar_t>(), P, in.size(2),
                                             in.size(3), out.size(2), out.size(3), V, th, mw);
  });
  return true;
}

// Channel-diagonal gather on the (P, H, W, V) view (P = N*C, V = 1 for NCHW; P = N,
// V = C for channels_last): out[p, a, b, v] = init[c] + sum over row taps (k1, i1)
// of a and column taps (k2, i2) of b of in[p, i1, i2, v] * wd[c, k1, k2].
// Forward: in = x with source taps; backward-input: in = grad_output, target taps.
template <typename scalar_t>
void diagonal_gather(const scalar_t* in, scalar_t* out, const at::opmath_type<scalar_t>* wd,
                     const at::opmath_type<scalar_t>* init, int64_t P, int64_t C,
                     int64_t IH, int64_t IW, int64_t OH, int64_t OW, int64_t V, int64_t KH,
                     int64_t KW, const Taps& th, const Taps& tw, bool forward,
                     std::array<int64_t, 4> cs) {
  using acc_t = at::opmath_type<scalar_t>;
  // Row buffer of OW*V accumulators; each row tap adds one filtered input row.
  at::parallel_for(0, P * OH, grain(OW * V), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(OW * V);
    const int64_t* ws = tw.start.data();
    const int64_t* wk = tw.k.data();
    const int64_t* wi = tw.idx.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / OH, a = r % OH;
      for (int64_t b = 0; b < OW; ++b) {
        for (int64_t v = 0; v < V; ++v) {
          buf[b * V + v] = init ? init[V == 1 ? p % C : v] : acc_t(0);
        }
      }
      for (int64_t j = th.start[a]; j < th.start[a + 1]; ++j) {
        const scalar_t* irow = in + (p * IH + th.idx[j]) * IW * V;
        const int64_t ko = th.k[j] * KW;
        if (V == 1) {
          // Along a row, input column i and output column o meet through tap k where
          // o = i*s + k*d - p - off (cs = {s, d, p, off}): for a fixed tap that is a
          // plain strided loop with no index tables. Forward writes every s-th output
          // from consecutive inputs; backward (the correlation) reads every s-th.
          const acc_t* wr = wd + (p % C) * KH * KW + ko;
          // i: the input-image column (source here when forward, destination when not);
          // j = i*st + c0: the cropped-output column.
          const int64_t st = cs[0], n_i = forward ? IW : OW, n_j = forward ? OW : IW;
          for (int64_t k = 0; k < KW; ++k) {
            const acc_t wv = wr[k];
            const int64_t c0 = k * cs[1] - cs[2] - cs[3];
            // 0 <= i < n_i and 0 <= i*st + c0 < n_j
            const int64_t lo = c0 >= 0 ? 0 : (-c0 + st - 1) / st;
            const int64_t hi = std::min<int64_t>(n_i, n_j - c0 <= 0 ? 0 : (n_j - c0 + st - 1) / st);
            acc_t* __restrict__ bp = buf.data();
            if (forward) {
              for (int64_t i = lo; i < hi; ++i) bp[i * st + c0] += wv * static_cast<acc_t>(irow[i]);
            } else {
              for (int64_t i = lo; i < hi; ++i) bp[i] += wv * static_cast<acc_t>(irow[i * st + c0]);
            }
          }
        } else {
          for (int64_t b = 0; b < OW; ++b) {
            acc_t* ob = buf.data() + b * V;
            for (int64_t q = ws[b]; q < ws[b + 1]; ++q) {
              const scalar_t* ip = irow + wi[q] * V;
              const acc_t* wq = wd + ko + wk[q];
              for (int64_t v = 0; v < V; ++v) ob[v] += static_cast<acc_t>(ip[v]) * wq[v * KH * KW];
            }
          }
        }
      }
      scalar_t* orow = out + r * OW * V;
      for (int64_t e = 0; e < OW * V; ++e) orow[e] = static_cast<scalar_t>(buf[e]);
    }
  });
}

inline c10::ScalarType acc_type_of(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// deconv_is_channel_diagonal (deconv/args.h) with tensor ops costs tens of ms on a 21x21x64x64
// weight; a direct scan that stops at the first off-diagonal non-zero costs microseconds.
bool is_channel_diagonal_cpu(const at::Tensor& weight, int64_t groups) {
  const int64_t cin_g = weight.size(0) / groups, cout_g = weight.size(1);
  if (cin_g != cout_g) return false;
  const at::Tensor w = weight.contiguous();
  const int64_t K = w.size(2) * w.size(3);
  bool diagonal = true;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "deconv_diag_check", [&] {
    const scalar_t* p = w.const_data_ptr<scalar_t>();
    for (int64_t ci = 0; ci < w.size(0) && diagonal; ++ci) {
      for (int64_t j = 0; j < cout_g && diagonal; ++j) {
        if (ci % cin_g == j) continue;
        const scalar_t* blk = p + (ci * cout_g + j) * K;
        for (int64_t e = 0; e < K; ++e) {
          if (static_cast<float>(blk[e]) != 0.f) {  // NaN != 0 too: stays exact
            diagonal = false;
            break;
          }
        }
      }
    }
  });
  return diagonal;
}

// (C, KH, KW) diagonal of a channel-diagonal weight, in the accumulation type.
at::Tensor diagonal_weight(const at::Tensor& w, int64_t G) {
  const int64_t cg = w.size(1), KH = w.size(2), KW = w.size(3);
  return w.reshape({G, cg, cg, KH, KW})
      .diagonal(0, 1, 2)  // (G, KH, KW, cg)
      .permute({0, 3, 1, 2})
      .reshape({G * cg, KH, KW})
      .to(acc_type_of(w.scalar_type()))
      .contiguous();
}

// ---------------------------------------------------------------------------------
// Any other weight: sub-pixel (phase) decomposition, then GEMMs.
//
// Along an axis, input i reaches full-map position Z - p = i*s + k*d - p through tap k.
// Writing k*d = r + s*m (0 <= r < s), position Z = q*s + r (block q, phase r) receives
// x[q - m] through each tap of phase r. So every block of s_h x s_w outputs is the same
// dense linear map of the inputs x[:, q_h - m_h, q_w - m_w] over the few distinct
// offsets m (2 x 2 for FCN's k = 2s):
//   D[(co, r_h, r_w)][block] = sum over (ci, m_h, m_w) of B[(co, r_h, r_w)][(ci, m_h, m_w)]
//                                                      * col[(ci, m_h, m_w)][block],
// one GEMM per chunk of block rows (AVX-512 kernels below, else ATen's mm), then D is
// copied into the crop. No multiplies by the zeros a strided transposed convolution
// inserts, no scatter-add, only the blocks under the crop window. The two gradients are
// the other two products of the same matrices. Chunks have sizes derived from the
// shapes alone and every sum a fixed order: the same bits on every run and for any
// thread count. Every layout, dilation, group count and crop takes this path.

// One axis. Crop index a sits at Z = a + pre (pre = offset + padding), in block Z / s
// and phase Z % s; the crop spans blocks q0 .. q0 + nq - 1. Block j (counted from q0)
// reads, through offset m, position j + m.back() - m of the input padded to nq + dm
// positions (dm = m.back() - m.front()) starting at input index q0 - m.back().
struct PhaseAxis {
  int64_t s = 1, pre = 0, q0 = 0, nq = 0, dm = 0;
  std::vector<int64_t> m;      // the distinct offsets m, ascending
  std::vector<int64_t> r, mi;  // per tap k: its phase and the index of its m
};

PhaseAxis phase_axis(int64_t K, int64_t s, int64_t p, int64_t d, int64_t off, int64_t out) {
  PhaseAxis a;
  a.s = s;
  a.pre = off + p;
  a.q0 = a.pre / s;
  a.nq = (a.pre + out - 1) / s - a.q0 + 1;
  for (int64_t k = 0; k < K; ++k) a.m.push_back(k * d / s);
  a.m.erase(std::unique(a.m.begin(), a.m.end()), a.m.end());  // ascending already
  a.dm = a.m.back() - a.m.front();
  for (int64_t k = 0; k < K; ++k) {
    a.r.push_back(k * d % s);
    a.mi.push_back(std::lower_bound(a.m.begin(), a.m.end(), k * d / s) - a.m.begin());
  }
  return a;
}

// Both axes, per-group channels and the GEMM sizes: K = cin * |m_h| * |m_w| rows
// (ci, i_h, i_w) of col, M = cout * s_h * s_w rows (co, r_h, r_w) of D. Padded input
// planes are Hp x Wp; a block row of col / D has Wp blocks, of which the last dm_w are
// unused (so that col rows are plain copies of padded planes). The N * h.nq block rows
// are split into chunks of rc rows.
struct PhaseGeom {
  PhaseAxis h, w;
  int64_t G = 1, cin = 0, cout = 0, K = 0, M = 0, Hp = 0, Wp = 0, rows = 0, rc = 1, chunks = 0;
};

PhaseGeom phase_geom(int64_t N, int64_t Cin, at::IntArrayRef w, int64_t groups,
                     at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, at::IntArrayRef offset, int64_t OH,
                     int64_t OW, int64_t elem_size) {
  PhaseGeom g;
  g.h = phase_axis(w[2], stride[0], padding[0], dilation[0], offset[0], OH);
  g.w = phase_axis(w[3], stride[1], padding[1], dilation[1], offset[1], OW);
  g.G = groups;
  g.cin = Cin / groups;
  g.cout = w[1];
  g.K = g.cin * static_cast<int64_t>(g.h.m.size() * g.w.m.size());
  g.M = g.cout * g.h.s * g.w.s;
  g.Hp = g.h.nq + g.h.dm;
  g.Wp = g.w.nq + g.w.dm;
  g.rows = N * g.h.nq;
  // Chunks of about 2 MiB of col + D: large GEMMs (oneDNN's bfloat16 GEMM costs ~10 us
  // per call); at least two where there are rows enough so that small layers use two
  // threads, and a multiple of 4 beyond that for an even split. From the shapes only,
  // never the thread count, so the results do not depend on it.
  const int64_t total = g.rows * g.Wp * (g.K + 1 + g.M) * elem_size;
  int64_t n = std::max<int64_t>(2, (total + (int64_t{2} << 20) - 1) / (int64_t{2} << 20));
  if (n > 2) n = (n + 3) / 4 * 4;
  n = std::min(n, g.rows);
  g.rc = (g.rows + n - 1) / n;
  g.chunks = (g.rows + g.rc - 1) / g.rc;
  return g;
}

// ---- float GEMM on AVX-512 ------------------------------------------------------
// MKL runs its AVX2 kernels on AMD CPUs (~50 GMAC/s per core measured here), half of
// what AVX-512 FMAs give, and oneDNN's bfloat16 GEMM costs ~10 us per call, more than
// the whole GEMM of FCN's small layers. So where ATen's CPU capability is AVX-512 the
// phase GEMMs run these register-tile kernels in float (bfloat16 / half data converted
// on the way in and rounded once on the way out). Every element is one fixed sequence
// of FMAs: the bits do not depend on how rows or columns are split.
constexpr int64_t kMr = 12, kNr = 32;  // sgemm_avx512's register tile: 12 x 2 zmm

// f(gi, m, k, e) for every weight element e = ((c * cout + co) * KH + ky) * KW + kx, in
// order: its group gi = c / cin, B row m = (co, r_h, r_w) and column k = (c % cin, i_h, i_w).
template <typename F>
void for_each_tap(const PhaseGeom& g, int64_t KH, int64_t KW, const F& f) {
  const int64_t nmh = g.h.m.size(), nmw = g.w.m.size(), sh = g.h.s, sw = g.w.s;
  const int64_t *rh = g.h.r.data(), *mih = g.h.mi.data(), *rw = g.w.r.data(), *miw = g.w.mi.data();
  int64_t e = 0;
  for (int64_t c = 0; c < g.G * g.cin; ++c) {
    const int64_t gi = c / g.cin, ci = c % g.cin;
    for (int64_t co = 0; co < g.cout; ++co) {
      for (int64_t ky = 0; ky < KH; ++ky) {
        const int64_t m0 = (co * sh + rh[ky]) * sw, k0 = (ci * nmh + mih[ky]) * nmw;
        for (int64_t kx = 0; kx < KW; ++kx) f(gi, m0 + rw[kx], k0 + miw[kx], e++);
      }
    }
  }
}

// B (M x K1 per group, K1 = K [+ 1]): row (co, r_h, r_w), column (ci, i_h, i_w); zero
// where a phase has no tap at an offset. With a bias, an extra column holds it (col's
// matching row is all ones), so the GEMM adds it before its single rounding. Stored as
// kRows: (G, M, K1) in the weight's type for ATen's mm; kPacked / kPackedT: B / B^T as
// sgemm_avx512's A, in float: strips of kMr rows, k-major, rows past the end zero.
enum class BLayout { kRows, kPacked, kPackedT };

at::Tensor phase_weight(const at::Tensor& weight, const at::Tensor& bias, const PhaseGeom& g,
                        BLayout layout) {
  const int64_t K1 = g.K + (bias.defined() ? 1 : 0);
  const bool tr = layout == BLayout::kPackedT, packed = layout != BLayout::kRows;
  const int64_t rows = tr ? K1 : g.M, cols = tr ? g.M : K1;  // of the stored matrix
  const int64_t per = (packed ? (rows + kMr - 1) / kMr * kMr : rows) * cols;
  at::Tensor b = at::zeros({g.G, per}, weight.options().dtype(packed ? at::kFloat : weight.scalar_type()));
  // B[m][k] of group gi sits at gi * per + moff[m] + koff[k].
  std::vector<int64_t> moff(g.M), koff(K1);
  for (int64_t i = 0; i < rows; ++i) {
    (tr ? koff : moff)[i] = packed ? (i / kMr) * cols * kMr + i % kMr : i * cols;
  }
  for (int64_t j = 0; j < cols; ++j) (tr ? moff : koff)[j] = packed ? j * kMr : j;
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "deconv_phase_weight", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const int64_t *mo = moff.data(), *ko = koff.data();
    const auto fill = [&](auto* dst) {
      using out_t = std::remove_pointer_t<decltype(dst)>;
      for_each_tap(g, w.size(2), w.size(3), [=](int64_t gi, int64_t m, int64_t k, int64_t e) {
        dst[gi * per + mo[m] + ko[k]] = static_cast<out_t>(wp[e]);
      });
      if (bias.defined()) {
        const scalar_t* bp = bias.const_data_ptr<scalar_t>();
        for (int64_t gi = 0; gi < g.G; ++gi) {
          for (int64_t m = 0; m < g.M; ++m) {
            dst[gi * per + moff[m] + koff[g.K]] = static_cast<out_t>(bp[gi * g.cout + m / (g.h.s * g.w.s)]);
          }
        }
      }
    };
    if (packed) {
      fill(b.mutable_data_ptr<float>());
    } else {
      fill(b.mutable_data_ptr<scalar_t>());
    }
  });
  return b;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FK_AVX512_GEMM 1
// C (m x n, ldc) = A (m x k, packed: see phase_weight) x B (k x n, row-major, ldb).
__attribute__((target("avx512f,avx512vl,fma"))) void sgemm_avx512(
    int64_t m, int64_t n, int64_t k, const float* ap, const float* b, int64_t ldb, float* c,
    int64_t ldc) {
  for (int64_t j = 0; j < n; j += kNr) {  // a 32-column slice of B stays in L1
    const int64_t nb = std::min(kNr, n - j);
    const __mmask16 m0 = nb >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nb) - 1);
    const __mmask16 m1 = nb >= 32 ? 0xFFFF : nb <= 16 ? 0 : static_cast<__mmask16>((1u << (nb - 16)) - 1);
    for (int64_t i = 0; i < m; i += kMr) {
      const float* a = ap + i * k;
      const float* bp = b + j;
      __m512 acc[kMr][2];
#pragma GCC unroll 12
      for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int64_t kk = 0; kk < k; ++kk, a += kMr, bp += ldb) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, bp), b1 = _mm512_maskz_loadu_ps(m1, bp + 16);
#pragma GCC unroll 12
        for (int r = 0; r < kMr; ++r) {
          const __m512 av = _mm512_set1_ps(a[r]);
          acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
      }
#pragma GCC unroll 12
      for (int r = 0; r < kMr; ++r) {  // constant indices: acc stays in registers
        if (i + r >= m) break;
        float* cp = c + (i + r) * ldc + j;
        _mm512_mask_storeu_ps(cp, m0, acc[r][0]);
        _mm512_mask_storeu_ps(cp + 16, m1, acc[r][1]);
      }
    }
  }
}

// The sum of the 16 lanes, a fixed tree. (Masked forms: GCC 12's unmasked ones warn.)
__attribute__((target("avx512f,avx512vl,fma"))) inline float hsum(__m512 v) {
  constexpr __mmask16 all = 0xFFFF;
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, all, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, all, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

// C (m x n, ldc) += A (m x k, lda) x B^T (B: n x k, ldb), rows contiguous along k: the
// weight gradient's sum over blocks. Register tile of 6 x 4 dot products, each a fixed
// sequence of 16-lane FMAs, then hsum.
__attribute__((target("avx512f,avx512vl,fma"))) void sgemm_nt_avx512(
    int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
    float* c, int64_t ldc) {
  constexpr int kTi = 6, kTj = 4;
  const int64_t kv = k / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (k - kv)) - 1);
  for (int64_t i = 0; i < m; i += kTi) {
    const float* ar[kTi];
#pragma GCC unroll 6
    for (int r = 0; r < kTi; ++r) ar[r] = a + std::min(i + r, m - 1) * lda;  // edge: repeated, not stored
    for (int64_t j = 0; j < n; j += kTj) {
      const float* br[kTj];
#pragma GCC unroll 4
      for (int q = 0; q < kTj; ++q) br[q] = b + std::min(j + q, n - 1) * ldb;
      __m512 acc[kTi][kTj];
#pragma GCC unroll 6
      for (int r = 0; r < kTi; ++r) {
#pragma GCC unroll 4
        for (int q = 0; q < kTj; ++q) acc[r][q] = _mm512_setzero_ps();
      }
      for (int64_t kk = 0; kk < k; kk += 16) {
        const __mmask16 mk = kk < kv ? static_cast<__mmask16>(0xFFFF) : tail;
        __m512 bv[kTj];
#pragma GCC unroll 4
        for (int q = 0; q < kTj; ++q) bv[q] = _mm512_maskz_loadu_ps(mk, br[q] + kk);
#pragma GCC unroll 6
        for (int r = 0; r < kTi; ++r) {
          const __m512 av = _mm512_maskz_loadu_ps(mk, ar[r] + kk);
#pragma GCC unroll 4
          for (int q = 0; q < kTj; ++q) acc[r][q] = _mm512_fmadd_ps(av, bv[q], acc[r][q]);
        }
      }
#pragma GCC unroll 6
      for (int r = 0; r < kTi; ++r) {
#pragma GCC unroll 4
        for (int q = 0; q < kTj; ++q) {
          if (i + r < m && j + q < n) c[(i + r) * ldc + j + q] += hsum(acc[r][q]);
        }
      }
    }
  }
}
#endif

// Whether the float kernels above run: an AVX-512 CPU as ATen sees it.
inline bool avx512_gemm() {
#ifdef FK_AVX512_GEMM
  return cpu_isa() == Isa::kAvx512;
#else
  return false;
#endif
}

// ---- data movement -------------------------------------------------------------
// Leaves for FK_MULTI_ISA (compiled for AVX-512 / AVX2 as well). TI is the image's
// element type, TB the buffers' (the GEMMs'); plain copies run on the unsigned integer
// of the element's size (Bits), which vectorises where bfloat16 / half structs do not.
template <typename T>
using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;

template <typename TO, typename TI>
FK_INLINE TO cvt(TI v) {
  if constexpr (std::is_same_v<TO, TI>) {
    return v;
  } else {
    return static_cast<TO>(v);
  }
}

// Plain-data arguments of the leaves.
struct MoveArgs {
  int64_t r0, r1;                // block rows [r0, r1): row = n * nqh + (q_h - q0h)
  int64_t s_h, q0h, nqh, pre_h;  // PhaseAxis h
  int64_t s_w, nqw, pre_w, Wp;   // PhaseAxis w, blocks per block row
  int64_t M, C, H, W;            // D's rows; the image's (group's) channels and size
  int64_t st[4];                 // the image's strides
};

MoveArgs move_args(const PhaseGeom& g, int64_t r0, int64_t r1, int64_t C, int64_t H, int64_t W,
                   at::IntArrayRef st) {
  return {r0, r1, g.h.s, g.h.q0, g.h.nq, g.h.pre, g.w.s, g.w.nq, g.w.pre, g.Wp, g.M, C, H, W,
          {st[0], st[1], st[2], st[3]}};
}

// Zero-padded input planes: dst[(p * Hp + u) * Wp + v] = x[n, c, u0 + u, v0 + v] for the
// planes p = n * C + c in [p0, p1) (0 outside the image).
template <typename TI, typename TB>
FK_INLINE void pad_leaf(TB* __restrict__ dst, const TI* __restrict__ x, const MoveArgs& a,
                        int64_t Hp, int64_t u0, int64_t v0, int64_t p0, int64_t p1) {
  const int64_t Wp = a.Wp, sw = a.st[3];
  const int64_t lo = std::clamp<int64_t>(-v0, 0, Wp), hi = std::clamp<int64_t>(a.W - v0, lo, Wp);
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t u = 0; u < Hp; ++u) {
      TB* d = dst + (p * Hp + u) * Wp;
      const int64_t ih = u0 + u;
      if (ih < 0 || ih >= a.H) {
        for (int64_t v = 0; v < Wp; ++v) d[v] = TB(0);
        continue;
      }
      const TI* s = x + (p / a.C) * a.st[0] + (p % a.C) * a.st[1] + ih * a.st[2] + (v0 + lo) * sw;
      for (int64_t v = 0; v < lo; ++v) d[v] = TB(0);
      if (sw == 1) {
        for (int64_t v = lo; v < hi; ++v) d[v] = cvt<TB>(s[v - lo]);
      } else {
        for (int64_t v = lo; v < hi; ++v) d[v] = cvt<TB>(s[(v - lo) * sw]);
      }
      for (int64_t v = hi; v < Wp; ++v) d[v] = TB(0);
    }
  }
}
FK_MULTI_ISA(pad_leaf)

// Along a crop row, b in [0, W) is in block j = (b + pre_w) / s_w - q0w at phase
// r = (b + pre_w) % s_w: d[r * ld + j] <-> img[b * is], an interleave of s_w rows of D.
template <bool kToImage, typename TI, typename TB>
FK_INLINE void mv(TI& i, TB& b) {
  if constexpr (kToImage) {
    i = cvt<TI>(b);
  } else {
    b = cvt<TB>(i);
  }
}
template <bool kToImage, int S, typename TI, typename TB>
FK_INLINE void interleave(TI* __restrict__ img, int64_t is, TB* __restrict__ d, int64_t ld,
                          int64_t s, int64_t r, int64_t W) {
  if (S > 0) s = S;  // a constant for the common strides, so that the loop vectorises
  int64_t b = 0;
  if (r != 0) {  // the first block, entered mid-way
    for (; r < s && b < W; ++r, ++b) mv<kToImage>(img[b * is], d[r * ld]);
    ++d;
  }
  const int64_t nj = (W - b) / s;
  TI* __restrict__ o = img + b * is;
  if (is == 1) {
    for (int64_t j = 0; j < nj; ++j) {
      for (int64_t k = 0; k < s; ++k) mv<kToImage>(o[j * s + k], d[k * ld + j]);
    }
  } else {
    for (int64_t j = 0; j < nj; ++j) {
      for (int64_t k = 0; k < s; ++k) mv<kToImage>(o[(j * s + k) * is], d[k * ld + j]);
    }
  }
  b += nj * s;
  d += nj;
  for (int64_t k = 0; b < W; ++b, ++k) mv<kToImage>(img[b * is], d[k * ld]);
}

// D (rows (co, r_h, r_w); columns: the blocks of rows [r0, r1), Wp per row) <-> the
// image (y or grad_output, from the group's first channel): img[n, co, a, b] =
// d[(co * s_h + r_h) * s_w + r_w][block]. Into D, the caller zeroes D once: positions
// outside the crop window are then never written, except in block rows that reach past
// the crop's top or bottom (the others are the same columns in every block row).
template <bool kToImage, typename TI, typename TB>
FK_INLINE void move_leaf(TI* img, TB* d, int64_t ld, const MoveArgs& a) {
  const int64_t sw = a.s_w, r = a.pre_w % sw;
  if (!kToImage) {  // block rows reaching past the crop's top or bottom: zero them first
    for (int64_t row = a.r0; row < a.r1; ++row) {
      const int64_t t = row % a.nqh;
      if ((t == 0 && a.pre_h % a.s_h != 0) || (t == a.nqh - 1 && (a.pre_h + a.H) % a.s_h != 0)) {
        for (int64_t m = 0; m < a.M; ++m) {
          TB* blk = d + m * ld + (row - a.r0) * a.Wp;
          for (int64_t j = 0; j < a.Wp; ++j) blk[j] = TB(0);
        }
      }
    }
  }
  for (int64_t row = a.r0; row < a.r1; ++row) {
    const int64_t n = row / a.nqh, Zq = (a.q0h + row % a.nqh) * a.s_h;
    TB* dcol = d + (row - a.r0) * a.Wp;
    for (int64_t rh = 0; rh < a.s_h; ++rh) {
      const int64_t y = Zq + rh - a.pre_h;
      if (y < 0 || y >= a.H) continue;
      TI* irow = img + n * a.st[0] + y * a.st[2];
      for (int64_t co = 0; co < a.C; ++co) {
        TI* i = irow + co * a.st[1];
        TB* dd = dcol + (co * a.s_h + rh) * sw * ld;
        switch (sw) {
          case 2: interleave<kToImage, 2>(i, a.st[3], dd, ld, sw, r, a.W); break;
          case 4: interleave<kToImage, 4>(i, a.st[3], dd, ld, sw, r, a.W); break;
          case 8: interleave<kToImage, 8>(i, a.st[3], dd, ld, sw, r, a.W); break;
          default: interleave<kToImage, 0>(i, a.st[3], dd, ld, sw, r, a.W);
        }
      }
    }
  }
}
template <typename TI, typename TB>
FK_INLINE void blocks_to_image(TI* img, TB* d, int64_t ld, const MoveArgs& a) {
  move_leaf<true>(img, d, ld, a);
}
template <typename TI, typename TB>
FK_INLINE void image_to_blocks(TI* img, TB* d, int64_t ld, const MoveArgs& a) {
  move_leaf<false>(img, d, ld, a);
}
FK_MULTI_ISA(blocks_to_image)
FK_MULTI_ISA(image_to_blocks)

// Calls of the leaves above, on Bits when no conversion is needed.
template <typename T, typename C>
void to_image(T* img, C* d, int64_t ld, const MoveArgs& a) {
  if constexpr (std::is_same_v<T, C>) {
    blocks_to_image_isa<Bits<T>, Bits<T>>(reinterpret_cast<Bits<T>*>(img), reinterpret_cast<Bits<T>*>(d), ld, a);
  } else {
    blocks_to_image_isa<T, C>(img, d, ld, a);
  }
}
template <typename T, typename C>
void to_blocks(const T* img, C* d, int64_t ld, const MoveArgs& a) {  // img is only read
  if constexpr (std::is_same_v<T, C>) {
    image_to_blocks_isa<Bits<T>, Bits<T>>(reinterpret_cast<Bits<T>*>(const_cast<T*>(img)),
                                          reinterpret_cast<Bits<T>*>(d), ld, a);
  } else {
    image_to_blocks_isa<T, C>(const_cast<T*>(img), d, ld, a);
  }
}

// x (any strides) as padded planes of C, plus a zero tail for the copies of the last
// plane that run dm_w past its end (into unused blocks).
template <typename T, typename C>
at::Tensor phase_pad(const at::Tensor& x, const PhaseGeom& g) {
  const int64_t P = x.size(0) * x.size(1), plane = g.Hp * g.Wp;
  at::Tensor xp = at::empty({P * plane + g.w.dm}, x.options().dtype(c10::CppTypeToScalarType<C>::value));
  C* dst = xp.mutable_data_ptr<C>();
  std::fill(dst + P * plane, dst + P * plane + g.w.dm, C(0));
  const MoveArgs a = move_args(g, 0, 0, x.size(1), x.size(2), x.size(3), x.strides());
  const T* src = x.const_data_ptr<T>();
  const int64_t u0 = g.h.q0 - g.h.m.back(), v0 = g.w.q0 - g.w.m.back();
  at::parallel_for(0, P, std::max<int64_t>(1, 32768 / plane), [&](int64_t p0, int64_t p1) {
    if constexpr (std::is_same_v<T, C>) {
      pad_leaf_isa<Bits<T>, Bits<T>>(reinterpret_cast<Bits<T>*>(dst), reinterpret_cast<const Bits<T>*>(src), a,
                                     g.Hp, u0, v0, p0, p1);
    } else {
      pad_leaf_isa<T, C>(dst, src, a, g.Hp, u0, v0, p0, p1);
    }
  });
  return xp;
}

// col[(ci, i_h, i_w)][(row - r0) * Wp + j] for block rows [r0, r1) of group gi: each
// row of col is a copy of a padded plane from (u, v) = (m_h.back() - m_h, m_w.back() - m_w)
// on. zero_unused clears the unused blocks (the weight gradient sums over all blocks).
template <typename C>
void phase_im2col(C* col, int64_t ld, const C* xp, const PhaseGeom& g, int64_t Cin,
                  int64_t gi, int64_t r0, int64_t r1, bool zero_unused) {
  const int64_t nmh = g.h.m.size(), nmw = g.w.m.size(), Wp = g.Wp, plane = g.Hp * Wp;
  for (int64_t ci = 0; ci < g.cin; ++ci) {
    for (int64_t iy = 0; iy < nmh; ++iy) {
      for (int64_t ix = 0; ix < nmw; ++ix) {
        C* dst = col + ((ci * nmh + iy) * nmw + ix) * ld;
        const int64_t shift = (g.h.m.back() - g.h.m[iy]) * Wp + g.w.m.back() - g.w.m[ix];
        for (int64_t row = r0; row < r1;) {  // one copy per image
          const int64_t n = row / g.h.nq, t = row % g.h.nq, cnt = std::min(r1 - row, g.h.nq - t);
          const C* src = xp + (n * Cin + gi * g.cin + ci) * plane + t * Wp + shift;
          std::copy(src, src + cnt * Wp, dst + (row - r0) * Wp);
          row += cnt;
        }
        if (zero_unused && Wp > g.w.nq) {
          for (int64_t row = r0; row < r1; ++row) {
            std::fill(dst + (row - r0) * Wp + g.w.nq, dst + (row - r0 + 1) * Wp, C(0));
          }
        }
      }
    }
  }
}

inline int64_t aligned(int64_t n) { return (n + 63) / 64 * 64; }  // buffer offsets: 64 elements

template <typename C>
at::Tensor buffer(int64_t n, const at::Tensor& like) {
  return at::empty({n}, like.options().dtype(c10::CppTypeToScalarType<C>::value));
}

// ---- the three products -----------------------------------------------------------
// T: the tensors' type; C: the buffers' and GEMMs' (float for the AVX-512 kernels,
// else T with ATen's mm).

// Forward: y (N, G * cout, OH, OW), any strides, from x through B.
template <typename T, typename C>
void phase_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   at::Tensor& y, const PhaseGeom& g) {
  const bool fast = std::is_same_v<C, float> && avx512_gemm();
  const at::Tensor bt = phase_weight(weight, bias, g, fast ? BLayout::kPacked : BLayout::kRows);
  const at::Tensor xp = phase_pad<T, C>(x, g);
  const int64_t K1 = g.K + (bias.defined() ? 1 : 0), ld = g.rc * g.Wp, Cin = x.size(1);
  T* yp = y.mutable_data_ptr<T>();
  at::parallel_for(0, g.chunks, 1, [&](int64_t c0, int64_t c1) {
    at::Tensor buf = buffer<C>(aligned(K1 * ld) + g.M * ld, x);
    at::Tensor col = buf.narrow(0, 0, K1 * ld).view({K1, ld});
    at::Tensor d = buf.narrow(0, aligned(K1 * ld), g.M * ld).view({g.M, ld});
    if (K1 > g.K) col[g.K].fill_(1);  // the bias row
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * g.rc, r1 = std::min(g.rows, r0 + g.rc), nq = (r1 - r0) * g.Wp;
      const MoveArgs ya = move_args(g, r0, r1, g.cout, y.size(2), y.size(3), y.strides());
      for (int64_t gi = 0; gi < g.G; ++gi) {
        phase_im2col<C>(col.mutable_data_ptr<C>(), ld, xp.const_data_ptr<C>(), g, Cin, gi, r0, r1, false);
#ifdef FK_AVX512_GEMM
        if constexpr (std::is_same_v<C, float>) {
          if (fast) {
            sgemm_avx512(g.M, nq, K1, bt[gi].const_data_ptr<float>(), col.const_data_ptr<float>(),
                         ld, d.mutable_data_ptr<float>(), ld);
          }
        }
#endif
        if (!fast) {
          at::Tensor dv = d.narrow(1, 0, nq);
          at::mm_out(dv, bt[gi].view({g.M, K1}), col.narrow(1, 0, nq));
        }
        to_image<T, C>(yp + gi * g.cout * y.stride(1), d.mutable_data_ptr<C>(), ld, ya);
      }
    }
  });
}

// gx planes [p0, p1) of its (n, c) planes: gx[n, c, i_h, i_w] = sum over (m_h, m_w) of
// e[c / cin][(c % cin, m_h, m_w)][block (i_h + m_h, i_w + m_w)], in a fixed order,
// accumulated in acc (IH x Wa, Wa = max(IW, Wp)). Where Wa = Wp (E's row length) and an
// offset's blocks cover whole input rows, its terms are one contiguous loop over the
// plane (the columns past IW pick up neighbouring blocks and are dropped).
struct Col2imArgs {
  int64_t C, IH, IW, cin, K, nblk, q0h, nqh, q0w, nqw, Wp, nmh, nmw;
  const int64_t *mh, *mw;
  int64_t st[4];
};
template <typename T, typename C>
FK_INLINE void col2im_leaf(T* gx, const C* e, at::opmath_type<T>* __restrict__ acc,
                           const Col2imArgs& a, int64_t p0, int64_t p1) {
  using acc_t = at::opmath_type<T>;
  const int64_t Wp = a.Wp, Wa = std::max(a.IW, Wp);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / a.C, c = p % a.C;
    for (int64_t i = 0; i < a.IH * Wa; ++i) acc[i] = acc_t(0);
    for (int64_t iy = 0; iy < a.nmh; ++iy) {
      const int64_t dy = a.mh[iy] - a.q0h;  // input row i_h is block row i_h + dy
      const int64_t h0 = std::clamp<int64_t>(-dy, 0, a.IH), h1 = std::clamp<int64_t>(a.nqh - dy, h0, a.IH);
      for (int64_t ix = 0; ix < a.nmw; ++ix) {
        const int64_t dx = a.mw[ix] - a.q0w;  // input column i_w is block i_w + dx
        const int64_t lo = std::clamp<int64_t>(-dx, 0, a.IW), hi = std::clamp<int64_t>(a.nqw - dx, lo, a.IW);
        const int64_t k = ((c % a.cin) * a.nmh + iy) * a.nmw + ix;
        const C* __restrict__ src = e + ((c / a.cin) * a.K + k) * a.nblk + (n * a.nqh + dy) * Wp + dx;
        if (lo == 0 && hi == a.IW && Wa == Wp) {
          for (int64_t i = h0 * Wp; i < h1 * Wp; ++i) acc[i] += static_cast<acc_t>(src[i]);
        } else {
          for (int64_t ih = h0; ih < h1; ++ih) {
            for (int64_t iw = lo; iw < hi; ++iw) acc[ih * Wa + iw] += static_cast<acc_t>(src[ih * Wp + iw]);
          }
        }
      }
    }
    for (int64_t ih = 0; ih < a.IH; ++ih) {
      T* __restrict__ dst = gx + n * a.st[0] + c * a.st[1] + ih * a.st[2];
      const acc_t* arow = acc + ih * Wa;
      if (a.st[3] == 1) {
        for (int64_t iw = 0; iw < a.IW; ++iw) dst[iw] = static_cast<T>(arow[iw]);
      } else {
        for (int64_t iw = 0; iw < a.IW; ++iw) dst[iw * a.st[3]] = static_cast<T>(arow[iw]);
      }
    }
  }
}
FK_MULTI_ISA(col2im_leaf)

// Backward-input: E = B^T x D(grad) ((G, K, blocks)), then col2im_leaf.
template <typename T, typename C>
void phase_backward_input(const at::Tensor& grad, const at::Tensor& weight, at::Tensor& gx,
                          const PhaseGeom& g) {
  const bool fast = std::is_same_v<C, float> && avx512_gemm();
  const at::Tensor bt = phase_weight(weight, at::Tensor(), g, fast ? BLayout::kPackedT : BLayout::kRows);
  const int64_t ld = g.rc * g.Wp, nblk = g.rows * g.Wp;
  // (+ Wp: col2im_leaf's whole-row loops read up to Wp past the last block; zeroed)
  at::Tensor e_buf = buffer<C>(g.G * g.K * nblk + g.Wp, grad);
  e_buf.narrow(0, g.G * g.K * nblk, g.Wp).zero_();
  at::Tensor e = e_buf.narrow(0, 0, g.G * g.K * nblk).view({g.G, g.K, nblk});
  const T* gp = grad.const_data_ptr<T>();
  at::parallel_for(0, g.chunks, 1, [&](int64_t c0, int64_t c1) {
    at::Tensor gt = buffer<C>(g.M * ld, grad).zero_().view({g.M, ld});  // see move_leaf
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * g.rc, r1 = std::min(g.rows, r0 + g.rc), nq = (r1 - r0) * g.Wp;
      const MoveArgs ga = move_args(g, r0, r1, g.cout, grad.size(2), grad.size(3), grad.strides());
      for (int64_t gi = 0; gi < g.G; ++gi) {
        to_blocks<T, C>(gp + gi * g.cout * grad.stride(1), gt.mutable_data_ptr<C>(), ld, ga);
#ifdef FK_AVX512_GEMM
        if constexpr (std::is_same_v<C, float>) {
          if (fast) {
            sgemm_avx512(g.K, nq, g.M, bt[gi].const_data_ptr<float>(), gt.const_data_ptr<float>(), ld,
                         e.mutable_data_ptr<float>() + gi * g.K * nblk + r0 * g.Wp, nblk);
          }
        }
#endif
        if (!fast) {
          at::Tensor ev = e[gi].narrow(1, r0 * g.Wp, nq);
          at::mm_out(ev, bt[gi].view({g.M, g.K}).t(), gt.narrow(1, 0, nq));
        }
      }
    }
  });
  const int64_t IW = gx.size(3);
  const Col2imArgs a{gx.size(1), gx.size(2), IW, g.cin, g.K, nblk, g.h.q0, g.h.nq, g.w.q0, g.w.nq,
                     g.Wp, static_cast<int64_t>(g.h.m.size()), static_cast<int64_t>(g.w.m.size()),
                     g.h.m.data(), g.w.m.data(), {gx.stride(0), gx.stride(1), gx.stride(2), gx.stride(3)}};
  T* xp = gx.mutable_data_ptr<T>();
  const C* ep = e.const_data_ptr<C>();
  const int64_t plane = a.IH * std::max(IW, g.Wp);
  at::parallel_for(0, gx.size(0) * a.C, std::max<int64_t>(1, 16384 / plane), [&](int64_t p0, int64_t p1) {
    std::vector<at::opmath_type<T>> acc(plane);
    col2im_leaf_isa<T, C>(xp, ep, acc.data(), a, p0, p1);
  });
}

// acc[e] = (first ? 0 : acc[e]) + v[e] (bfloat16 / half partial sums, added in float).
template <typename T>
FK_INLINE void accumulate_leaf(at::opmath_type<T>* __restrict__ acc, const T* __restrict__ v,
                               int64_t n, bool first) {
  using acc_t = at::opmath_type<T>;
  if (first) {
    for (int64_t e = 0; e < n; ++e) acc[e] = static_cast<acc_t>(v[e]);
  } else {
    for (int64_t e = 0; e < n; ++e) acc[e] += static_cast<acc_t>(v[e]);
  }
}
FK_MULTI_ISA(accumulate_leaf)

// Backward-weight: B's gradient D(grad) x col^T summed over all blocks, in S slices of
// consecutive chunks (each accumulated in order, then the slices in order), mapped back
// to the (Cin, cout, KH, KW) weight layout.
template <typename T, typename C>
at::Tensor phase_backward_weight(const at::Tensor& grad, const at::Tensor& x,
                                 at::IntArrayRef weight_size, const PhaseGeom& g) {
  using acc_t = at::opmath_type<T>;
  const bool fast = std::is_same_v<C, float> && avx512_gemm();
  const bool reduced = !fast && !std::is_same_v<C, acc_t>;  // ATen's GEMM into C, sum in float
  const int64_t ld = g.rc * g.Wp, per = g.G * g.M * g.K, Cin = x.size(1);
  const int64_t S = std::clamp<int64_t>((int64_t{1} << 24) / per, 1, std::min<int64_t>(g.chunks, 8));
  const at::Tensor xp = phase_pad<T, C>(x, g);
  at::Tensor acc = buffer<acc_t>(S * per, x).view({S, g.G, g.M, g.K});
  const T* gp = grad.const_data_ptr<T>();
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    const int64_t tmp_n = reduced ? g.M * g.K : 0;
    at::Tensor buf = buffer<C>(aligned(g.K * ld) + aligned(g.M * ld) + tmp_n, x);
    at::Tensor col = buf.narrow(0, 0, g.K * ld).view({g.K, ld});
    at::Tensor gt = buf.narrow(0, aligned(g.K * ld), g.M * ld).view({g.M, ld}).zero_();  // see move_leaf
    at::Tensor tmp = reduced ? buf.narrow(0, aligned(g.K * ld) + aligned(g.M * ld), tmp_n).view({g.M, g.K})
                             : at::Tensor();
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t cb = s * g.chunks / S, ce = (s + 1) * g.chunks / S;
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t r0 = c * g.rc, r1 = std::min(g.rows, r0 + g.rc), nq = (r1 - r0) * g.Wp;
        const MoveArgs ga = move_args(g, r0, r1, g.cout, grad.size(2), grad.size(3), grad.strides());
        for (int64_t gi = 0; gi < g.G; ++gi) {
          phase_im2col<C>(col.mutable_data_ptr<C>(), ld, xp.const_data_ptr<C>(), g, Cin, gi, r0, r1, true);
          to_blocks<T, C>(gp + gi * g.cout * grad.stride(1), gt.mutable_data_ptr<C>(), ld, ga);
          at::Tensor a = acc[s][gi];
          acc_t* ap = a.mutable_data_ptr<acc_t>();
#ifdef FK_AVX512_GEMM
          if constexpr (std::is_same_v<C, float> && std::is_same_v<acc_t, float>) {
            if (fast) {
              if (c == cb) std::fill(ap, ap + g.M * g.K, 0.f);
              sgemm_nt_avx512(g.M, g.K, nq, gt.const_data_ptr<float>(), ld, col.const_data_ptr<float>(), ld,
                              ap, g.K);
              continue;
            }
          }
#endif
          const at::Tensor cv = col.narrow(1, 0, nq).t(), gv = gt.narrow(1, 0, nq);
          if (reduced) {
            at::mm_out(tmp, gv, cv);
            accumulate_leaf_isa<C>(ap, tmp.const_data_ptr<C>(), g.M * g.K, c == cb);
          } else if (c == cb) {
            at::mm_out(a, gv, cv);
          } else {
            at::addmm_out(a, a, gv, cv);
          }
        }
      }
    }
  });
  acc_t* ap = acc.mutable_data_ptr<acc_t>();
  for (int64_t s = 1; s < S; ++s) {  // the slices, in order
    for (int64_t e = 0; e < per; ++e) ap[e] += ap[s * per + e];
  }
  at::Tensor gw = buffer<acc_t>(c10::multiply_integers(weight_size), x);
  acc_t* wp = gw.mutable_data_ptr<acc_t>();
  for_each_tap(g, weight_size[2], weight_size[3], [&](int64_t gi, int64_t m, int64_t k, int64_t e) {
    wp[e] = ap[(gi * g.M + m) * g.K + k];
  });
  return gw.view(weight_size).to(x.scalar_type());
}

// Runs f(T{}, C{}) with C = float where the AVX-512 kernels run (bfloat16 / half
// converted), else C = T (ATen's mm). oneDNN's bfloat16 GEMM (AVX512-BF16 dot products)
// does a multiply-add ~1.7x faster than our float kernels but costs ~10 us per call:
// bfloat16 keeps it for chunk GEMMs above 2M multiply-adds (measured crossover: FCN's
// upscore2 at batch 1, 1.1M, is faster here; upscore_pool4, 4.6M, with oneDNN).
template <typename T, typename F>
void with_compute_type(const PhaseGeom& g, const F& f) {
  if constexpr (std::is_same_v<T, double>) {
    f(T{}, T{});
  } else {
    const bool big = std::is_same_v<T, at::BFloat16> && g.M * g.K * g.rc * g.Wp > (int64_t{2} << 20);
    if (avx512_gemm() && !big) {
      f(T{}, float{});
    } else {
      f(T{}, T{});
    }
  }
}

at::Tensor conv_transpose2d_crop_cpu(const at::Tensor& self, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias_opt,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation, at::IntArrayRef offset,
                                     at::IntArrayRef size) {
  check_deconv_forward(self, weight, bias_opt, stride, padding, output_padding, groups,
                       dilation, offset, size);
  const int64_t N = self.size(0), IH = self.size(2), IW = self.size(3);
  const int64_t KH = weight.size(2), KW = weight.size(3), Cout = weight.size(1) * groups;
  const int64_t OH = size[0], OW = size[1];
  at::Tensor bias;
  if (bias_opt.has_value() && bias_opt->defined()) {
    bias = bias_opt->to(acc_type_of(bias_opt->scalar_type())).contiguous();
  }
  const auto fmt = layout_of(self);
  if (N == 0 || Cout == 0) return at::empty({N, Cout, OH, OW}, self.options().memory_format(fmt));

  if (is_channel_diagonal_cpu(weight, groups)) {
    at::Tensor y = at::empty({N, Cout, OH, OW}, self.options().memory_format(fmt));
    const at::Tensor x = self.contiguous(fmt);
    const at::Tensor wd = diagonal_weight(weight, groups);
    const Taps th = source_taps(OH, offset[0], 0, KH, stride[0], padding[0], dilation[0], IH);
    const Taps tw = source_taps(OW, offset[1], 0, KW, stride[1], padding[1], dilation[1], IW);
    const auto [P, V] = planes_and_vec(x, fmt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "deconv_diag_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (!bias.defined() && uniform_diagonal<scalar_t>(x, y, P, V, wd, th, tw)) return;
      diagonal_gather<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                wd.const_data_ptr<acc_t>(),
                                bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr, P,
                                Cout, IH, IW, OH, OW, V, KH, KW, th, tw, /*forward=*/true,
                                {stride[1], dilation[1], padding[1], offset[1]});
    });
    return y;
  }

  // Any other weight: the phase GEMMs (PhaseGeom above), reading x through its strides.
  const PhaseGeom g = phase_geom(N, self.size(1), weight.sizes(), groups, stride, padding,
                                 dilation, offset, OH, OW, self.element_size());
  const at::Tensor b = bias_opt.has_value() && bias_opt->defined() ? bias_opt->contiguous() : at::Tensor();
  at::Tensor y = at::empty({N, Cout, OH, OW}, self.options().memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "deconv_phase_cpu", [&] {
    with_compute_type<scalar_t>(g, [&](auto t, auto c) {
      phase_forward<decltype(t), decltype(c)>(self, weight, b, y, g);
    });
  });
  return y;
}

at::Tensor conv_transpose2d_crop_backward_input_cpu(
    const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, at::IntArrayRef offset) {
  check_deconv_backward_input(grad_output, weight, input_size, stride, padding, groups,
                              dilation, offset);
  const int64_t Cin = input_size[1], IH = input_size[2], IW = input_size[3];
  const int64_t KH = weight.size(2), KW = weight.size(3);
  const int64_t OH = grad_output.size(2), OW = grad_output.size(3);
  const auto fmt = layout_of(grad_output);
  at::Tensor gx = at::empty(input_size, grad_output.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  if (OH == 0 || OW == 0) return gx.zero_();
  if (is_plane_constant(grad_output)) {  // e.g. loss = y.sum(): see deconv/const_grad.h
    return deconv_const_grad_input(grad_output, weight, input_size, stride, padding, groups,
                                   dilation, offset);
  }

  if (is_channel_diagonal_cpu(weight, groups)) {
    const at::Tensor g = grad_output.contiguous(fmt);
    const at::Tensor wd = diagonal_weight(weight, groups);
    const Taps th = target_taps(IH, KH, stride[0], padding[0], dilation[0], offset[0], OH);
    const Taps tw = target_taps(IW, KW, stride[1], padding[1], dilation[1], offset[1], OW);
    const auto [P, V] = planes_and_vec(gx, fmt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "deconv_diag_bwd_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (uniform_diagonal<scalar_t>(g, gx, P, V, wd, th, tw)) return;
      diagonal_gather<scalar_t>(g.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
                                wd.const_data_ptr<acc_t>(), nullptr, P, Cin, OH, OW, IH, IW,
                                V, KH, KW, th, tw, /*forward=*/false,
                                {stride[1], dilation[1], padding[1], offset[1]});
    });
    return gx;
  }

  const PhaseGeom g = phase_geom(input_size[0], Cin, weight.sizes(), groups, stride, padding,
                                 dilation, offset, OH, OW, grad_output.element_size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "deconv_phase_bwd_cpu", [&] {
    with_compute_type<scalar_t>(g, [&](auto t, auto c) {
      phase_backward_input<decltype(t), decltype(c)>(grad_output, weight, gx, g);
    });
  });
  return gx;
}

at::Tensor conv_transpose2d_crop_backward_weight_cpu(
    const at::Tensor& grad_output, const at::Tensor& self, at::IntArrayRef weight_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, at::IntArrayRef offset) {
  check_deconv_backward_weight(grad_output, self, weight_size, stride, padding, groups,
                               dilation, offset);
  const int64_t N = self.size(0), Cout = weight_size[1] * groups;
  const int64_t OH = grad_output.size(2), OW = grad_output.size(3);
  if (N == 0 || OH == 0 || OW == 0 || Cout == 0) {
    return at::zeros(weight_size, self.options());
  }
  if (is_plane_constant(grad_output)) {
    return deconv_const_grad_weight(grad_output, self, weight_size, stride, padding, groups,
                                    dilation, offset);
  }
  const PhaseGeom g = phase_geom(N, self.size(1), weight_size, groups, stride, padding,
                                 dilation, offset, OH, OW, self.element_size());
  at::Tensor gw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "deconv_phase_wgrad_cpu", [&] {
    with_compute_type<scalar_t>(g, [&](auto t, auto c) {
      gw = phase_backward_weight<decltype(t), decltype(c)>(grad_output, self, weight_size, g);
    });
  });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CPU, m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_cpu);
  m.impl("conv_transpose2d_crop_backward_input", &conv_transpose2d_crop_backward_input_cpu);
  m.impl("conv_transpose2d_crop_backward_weight", &conv_transpose2d_crop_backward_weight_cpu);
}

}  // namespace fcn_kernels
