// Transposed convolution on CPU with a channel-diagonal weight (FCN's bilinear
// upsampling, any depthwise weight): output (n, c, o) reads input channel c through its
// few kernel taps only. One filter on the whole diagonal (FCN's) runs on separable.h's
// 1-D map loops (uniform_diagonal); per-channel filters on a direct gather
// (diagonal_gather). Every output element is written by one task in a fixed order (no
// atomics, same bits every run).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/parallel.h"
#include "common/separable.h"
#include "deconv/args.h"
#include "deconv/cpu.h"

namespace fcn_kernels {
namespace deconv_cpu {

Taps source_taps(int64_t out, int64_t off, int64_t k0, int64_t k1, int64_t s, int64_t p, int64_t d,
                 int64_t in) {
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

Taps target_taps(int64_t in, int64_t K, int64_t s, int64_t p, int64_t d, int64_t off, int64_t out) {
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

namespace {

// Taps per position, on average (at least 1): the work of one output element along
// this axis, for the parallel grain.
int64_t taps_per_position(const Taps& t) {
  const int64_t n = static_cast<int64_t>(t.start.size()) - 1;
  return std::max<int64_t>(1, static_cast<int64_t>(t.k.size()) / std::max<int64_t>(1, n));
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
bool is_uniform(const acc_t* wd, int64_t channels, int64_t taps) {
  for (int64_t e = taps; e < channels * taps; ++e) {
    if (!(wd[e] == wd[e % taps])) return false;  // NaN compares unequal: direct path
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
template <typename scalar_t, typename Vec>
void uniform_rows(const at::Tensor& in, at::Tensor& out, int64_t P, Vec V, const Taps& th,
                  const std::vector<Csr<at::opmath_type<scalar_t>>>& mw, int64_t taps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t IH = in.size(2), IW = in.size(3), OH = out.size(2), row = out.size(3) * V;
  const scalar_t* src = in.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, P * OH, grain(row * taps), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> h(row), acc(row, acc_t(0));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / OH, a = r % OH;
      if (th.start[a] == th.start[a + 1]) std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t j = th.start[a]; j < th.start[a + 1]; ++j) {
        const Csr<acc_t>& m = mw[th.k[j]];
        sep::hpass_isa<scalar_t, Vec>(src + (p * IH + th.idx[j]) * IW * V, h.data(), out.size(3), V,
                                      m.start.data(), m.index.data(), m.weight.data(), m.two_taps);
        sep::axpy_isa<acc_t>(acc.data(), h.data(), acc_t(1), row, j == th.start[a]);
      }
      sep::store_isa<scalar_t>(dst + r * row, acc.data(), row);
    }
  });
}

}  // namespace

template <typename scalar_t>
bool uniform_diagonal(const at::Tensor& in, at::Tensor& out, const at::Tensor& wd,
                      const DiagonalProduct& prod) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t KH = wd.size(1), KW = wd.size(2);
  const acc_t* f = wd.const_data_ptr<acc_t>();
  if (!is_uniform(f, wd.size(0), KH * KW)) return false;
  std::vector<acc_t> u, v;
  if (rank1(f, KH, KW, u, v)) {
    separable_apply<scalar_t>(in, out, prod.planes, prod.vec, weighted_map(prod.rows, u.data()),
                              weighted_map(prod.cols, v.data()));
    return true;
  }
  std::vector<Csr<acc_t>> mw;
  for (int64_t ky = 0; ky < KH; ++ky) mw.push_back(weighted_map(prod.cols, f + ky * KW));
  // A row's work: its row taps times each column's taps (a k64 s32 backward row sums
  // 64 filtered rows of 16 elements each).
  const int64_t taps = taps_per_position(prod.rows) * taps_per_position(prod.cols);
  with_vec(prod.vec, [&](auto vec) {
    uniform_rows<scalar_t, decltype(vec)>(in, out, prod.planes, vec, prod.rows, mw, taps);
  });
  return true;
}

template <typename scalar_t>
void diagonal_gather(const at::Tensor& in, at::Tensor& out, const at::Tensor& wd,
                     const at::Tensor& bias, const DiagonalProduct& prod) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = wd.size(0), KH = wd.size(1), KW = wd.size(2);
  const int64_t IH = in.size(2), IW = in.size(3), OH = out.size(2), OW = out.size(3);
  const int64_t V = prod.vec;
  const scalar_t* src = in.const_data_ptr<scalar_t>();
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  const acc_t* w = wd.const_data_ptr<acc_t>();
  const acc_t* init = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
  const Taps &th = prod.rows, &tw = prod.cols;
  const DeconvAxis ax = prod.col_axis;
  const int64_t work = OW * V * taps_per_position(th) * taps_per_position(tw);
  // Row buffer of OW*V accumulators; each row tap adds one filtered input row.
  at::parallel_for(0, prod.planes * OH, grain(work), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(OW * V);
    const int64_t* ws = tw.start.data();
    const int64_t* wk = tw.k.data();
    const int64_t* wi = tw.idx.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / OH, a = r % OH;
      for (int64_t b = 0; b < OW; ++b) {
        for (int64_t v = 0; v < V; ++v) {
          buf[b * V + v] = init ? init[V == 1 ? p % channels : v] : acc_t(0);
        }
      }
      for (int64_t j = th.start[a]; j < th.start[a + 1]; ++j) {
        const scalar_t* irow = src + (p * IH + th.idx[j]) * IW * V;
        const int64_t ko = th.k[j] * KW;
        if (V == 1) {
          // Along a row, input column i and output column o meet through tap k where
          // o = i*stride + k*dilation - padding - offset: for a fixed tap that is a
          // plain strided loop with no index tables. Forward writes every stride-th
          // output from consecutive inputs; backward (the correlation) reads every
          // stride-th.
          const acc_t* wr = w + (p % channels) * KH * KW + ko;
          // i: the input-image column (source here when forward, destination when not);
          // j = i*st + c0: the cropped-output column.
          const int64_t st = ax.stride, n_i = prod.forward ? IW : OW, n_j = prod.forward ? OW : IW;
          for (int64_t k = 0; k < KW; ++k) {
            const acc_t wv = wr[k];
            const int64_t c0 = k * ax.dilation - ax.padding - ax.offset;
            // 0 <= i < n_i and 0 <= i*st + c0 < n_j
            const int64_t lo = c0 >= 0 ? 0 : (-c0 + st - 1) / st;
            const int64_t hi = std::min<int64_t>(n_i, n_j - c0 <= 0 ? 0 : (n_j - c0 + st - 1) / st);
            acc_t* __restrict__ bp = buf.data();
            if (prod.forward) {
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
              const acc_t* wq = w + ko + wk[q];
              for (int64_t v = 0; v < V; ++v) ob[v] += static_cast<acc_t>(ip[v]) * wq[v * KH * KW];
            }
          }
        }
      }
      scalar_t* orow = dst + r * OW * V;
      for (int64_t e = 0; e < OW * V; ++e) orow[e] = static_cast<scalar_t>(buf[e]);
    }
  });
}

#define FK_DIAGONAL_INSTANTIATE(T)                                                     \
  template bool uniform_diagonal<T>(const at::Tensor&, at::Tensor&, const at::Tensor&, \
                                    const DiagonalProduct&);                           \
  template void diagonal_gather<T>(const at::Tensor&, at::Tensor&, const at::Tensor&,  \
                                   const at::Tensor&, const DiagonalProduct&);
FK_DIAGONAL_INSTANTIATE(double)
FK_DIAGONAL_INSTANTIATE(float)
FK_DIAGONAL_INSTANTIATE(c10::Half)
FK_DIAGONAL_INSTANTIATE(c10::BFloat16)
#undef FK_DIAGONAL_INSTANTIATE

}  // namespace deconv_cpu
}  // namespace fcn_kernels
