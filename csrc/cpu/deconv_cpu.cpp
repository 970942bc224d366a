// Fused transposed convolution + crop on CPU: forward, backward-input, backward-weight.
//
// Only the cropped window is ever computed. Two paths:
// * channel-diagonal weight (FCN's bilinear upsampling, any depthwise weight): a direct
//   gather, output (n, c, o) reads input channel c through its few kernel taps only,
//   as strided row loops; every output element is written by one task in a fixed
//   order (no atomics, same bits every run);
// * any other weight: ATen's optimised (oneDNN) transposed convolution and its
//   backward, set up so that their output *is* the crop window (CropRegion below).
//   Measured on FCN's shapes this beat our own GEMM + col2im gather by 2-3x.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv_transpose2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"
#include "separable.h"

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
  at::parallel_for(0, P * OH, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row)),
                   [&](int64_t begin, int64_t end) {
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
  auto run = [&](auto planar) {
    uniform_rows<scalar_t, decltype(planar)>(in.const_data_ptr<scalar_t>(),
                                             out.mutable_data_ptr<scalar_t>(), P, in.size(2),
                                             in.size(3), out.size(2), out.size(3), V, th, mw);
  };
  if (V == 1) run(std::true_type{}); else run(std::false_type{});
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

// A transposed convolution whose output is exactly the crop window (up to stride - 1
// extra rows/columns at the far end): padding + offset moves the window to the origin;
// since padding trims both ends, output_padding and, if still short, trailing zero
// input rows/columns (which add nothing) restore the far end. The full uncropped map
// is never materialised, and ATen's optimised CPU convolution does the arithmetic.
struct CropRegion {
  std::vector<int64_t> padding{0, 0}, output_padding{0, 0}, extra{0, 0}, full{0, 0};

  at::Tensor extend(const at::Tensor& x) const {  // append the zero rows/columns
    if (extra[0] == 0 && extra[1] == 0) return x;
    return at::constant_pad_nd(x, {0, extra[1], 0, extra[0]});
  }
  std::vector<int64_t> extended(at::IntArrayRef sizes) const {
    return {sizes[0], sizes[1], sizes[2] + extra[0], sizes[3] + extra[1]};
  }
  at::Tensor window(const at::Tensor& y, at::IntArrayRef size) const {
    return y.narrow(2, 0, size[0]).narrow(3, 0, size[1]);
  }
  at::Tensor pad_grad(const at::Tensor& g) const {  // zeros where the map exceeds the window
    const int64_t eh = full[0] - g.size(2), ew = full[1] - g.size(3);
    return (eh == 0 && ew == 0) ? g : at::constant_pad_nd(g, {0, ew, 0, eh});
  }
};

CropRegion crop_region(at::IntArrayRef x, at::IntArrayRef w, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation,
                       at::IntArrayRef offset, at::IntArrayRef size) {
  CropRegion r;
  for (int a = 0; a < 2; ++a) {
    const int64_t s = stride[a], d = dilation[a];
    r.padding[a] = padding[a] + offset[a];
    int64_t full = deconv_full_size(x[2 + a], w[2 + a], s, r.padding[a], d, 0);
    const int64_t short_by = size[a] - full;
    if (short_by > 0 && short_by < std::max(s, d)) {
      r.output_padding[a] = short_by;  // ATen allows output_padding < max(stride, dilation)
    } else if (short_by > 0) {
      r.extra[a] = (short_by + s - 1) / s;
    }
    r.full[a] = full + r.output_padding[a] + r.extra[a] * s;
  }
  return r;
}

// deconv_is_channel_diagonal (common.h) with tensor ops costs tens of ms on a 21x21x64x64
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

  // General weight: ATen's (oneDNN) transposed convolution over the crop window only.
  const CropRegion r = crop_region(self.sizes(), weight.sizes(), stride, padding, dilation,
                                   offset, size);
  const at::Tensor full = at::conv_transpose2d(r.extend(self), weight, bias_opt, stride,
                                               r.padding, r.output_padding, groups, dilation);
  return r.window(full, size).contiguous(fmt);
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

  const CropRegion r = crop_region(input_size, weight.sizes(), stride, padding, dilation,
                                   offset, {OH, OW});
  const at::Tensor x_ext = at::empty(r.extended(input_size), grad_output.options());
  const at::Tensor gi = std::get<0>(at::convolution_backward(
      r.pad_grad(grad_output), x_ext, weight, std::nullopt, stride, r.padding, dilation,
      /*transposed=*/true, r.output_padding, groups, {true, false, false}));
  gx.copy_(gi.narrow(2, 0, IH).narrow(3, 0, IW));
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
  const CropRegion r = crop_region(self.sizes(), weight_size, stride, padding, dilation,
                                   offset, {OH, OW});
  const at::Tensor w = at::empty(weight_size, self.options());
  return std::get<1>(at::convolution_backward(
      r.pad_grad(grad_output), r.extend(self), w, std::nullopt, stride, r.padding, dilation,
      /*transposed=*/true, r.output_padding, groups, {false, true, false}));
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CPU, m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_cpu);
  m.impl("conv_transpose2d_crop_backward_input", &conv_transpose2d_crop_backward_input_cpu);
  m.impl("conv_transpose2d_crop_backward_weight", &conv_transpose2d_crop_backward_weight_cpu);
}

}  // namespace fcn_kernels
