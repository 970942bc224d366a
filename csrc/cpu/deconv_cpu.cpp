// Fused transposed convolution + crop on CPU: forward, backward-input, backward-weight.
//
// Only the cropped window is ever computed or allocated. Two paths:
// * channel-diagonal weight (FCN's bilinear upsampling, any depthwise weight): a direct
//   gather, output (n, c, o) reads input channel c through its few kernel taps only;
// * any other weight: channel mixing as a batched GEMM on the *input-sized* data
//   (cols = W^T x per kernel row, in chunks bounded by the output size), followed by a
//   gather that reads, for every cropped output pixel, the taps that land on it
//   (col2im restricted to the crop). Backward is the same two steps transposed:
//   a gather of grad_output (im2col of the crop) followed by a GEMM.
// Every output element is written by one task in a fixed order, and the GEMMs reduce
// in a fixed order: same bits on every run, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../common.h"

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
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i = deconv_source(o + off, k, s, p, d, in);
      if (i >= 0) t.add(k, i);
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

// col2im on the crop: col is (G, R, N*L) with R = (k1-k0)*Cout_g*KW rows ordered
// (ky-k0, j, kx). y[n, co, oh, ow] (+)= sum over row taps ky in [k0, k1) of oh and
// column taps kx of ow of col[g, row(ky, j, kx), n*L + iy*IW + ix], co = g*Cout_g + j.
// y (acc_t) is addressed by strides ys so both layouts work; `first` initialises
// with the bias instead of accumulating.
template <typename acc_t>
void col2im_crop(const acc_t* col, acc_t* y, const int64_t* ys, bool first,
                 const acc_t* bias, int64_t N, int64_t Cout, int64_t cout_g, int64_t R,
                 int64_t OH, int64_t OW, int64_t L, int64_t IW, int64_t KW, int64_t k0,
                 const Taps& th, const Taps& tw) {
  const int64_t NL = N * L;
  at::parallel_for(0, N * Cout * OH, grain(OW), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oh = r % OH, co = (r / OH) % Cout, n = r / (OH * Cout);
      const int64_t g = co / cout_g, j = co % cout_g;
      acc_t* yrow = y + n * ys[0] + co * ys[1] + oh * ys[2];
      const int64_t ja = th.start[oh], jb = th.start[oh + 1];
      if (!first && ja == jb) continue;
      for (int64_t ow = 0; ow < OW; ++ow) {
        acc_t acc = first ? (bias ? bias[co] : acc_t(0)) : yrow[ow * ys[3]];
        for (int64_t t = ja; t < jb; ++t) {
          const acc_t* base = col + (g * R + ((th.k[t] - k0) * cout_g + j) * KW) * NL +
                              n * L + th.idx[t] * IW;
          for (int64_t q = tw.start[ow]; q < tw.start[ow + 1]; ++q) {
            acc += base[tw.k[q] * NL + tw.idx[q]];
          }
        }
        yrow[ow * ys[3]] = acc;
      }
    }
  });
}

// im2col of the crop: gcol[g, row(ky, j, kx), n*L + iy*IW + ix] =
// grad[n, g*Cout_g + j, target(iy, ky), target(ix, kx)], 0 where the tap lands
// outside the crop. grad (scalar_t) is addressed by strides gs.
template <typename scalar_t>
void im2col_crop(const scalar_t* grad, const int64_t* gs, at::opmath_type<scalar_t>* gcol,
                 int64_t G, int64_t N, int64_t cout_g, int64_t R, int64_t IH, int64_t IW,
                 int64_t KW, int64_t k0, int64_t OH, int64_t OW, const int64_t* st,
                 const int64_t* pd, const int64_t* dl, const int64_t* off) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, G * R * N * IH, grain(IW), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t iy = r % IH, n = (r / IH) % N, row = (r / (IH * N)) % R,
                    g = r / (IH * N * R);
      const int64_t kx = row % KW, j = (row / KW) % cout_g, ky = k0 + row / (KW * cout_g);
      acc_t* dst = gcol + r * IW;
      const int64_t oh = deconv_target(iy, ky, st[0], pd[0], dl[0], off[0], OH);
      if (oh < 0) {
        std::fill(dst, dst + IW, acc_t(0));
        continue;
      }
      const scalar_t* src = grad + n * gs[0] + (g * cout_g + j) * gs[1] + oh * gs[2];
      for (int64_t ix = 0; ix < IW; ++ix) {
        const int64_t ow = deconv_target(ix, kx, st[1], pd[1], dl[1], off[1], OW);
        dst[ix] = ow < 0 ? acc_t(0) : static_cast<acc_t>(src[ow * gs[3]]);
      }
    }
  });
}

inline c10::ScalarType acc_type_of(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Kernel rows per GEMM chunk so that one chunk of columns holds about `budget` elements.
inline int64_t rows_per_chunk(int64_t per_row, int64_t budget, int64_t KH) {
  return std::min<int64_t>(KH, std::max<int64_t>(1, budget / std::max<int64_t>(1, per_row)));
}

// (G, Cin_g, N*L) copy of x in the accumulation type: the GEMM operand.
at::Tensor grouped_input(const at::Tensor& x, int64_t G) {
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2) * x.size(3);
  return x.to(acc_type_of(x.scalar_type()))
      .reshape({N, G, C / G, L})
      .permute({1, 2, 0, 3})
      .reshape({G, C / G, N * L});
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

// (P, V) of the (P, H, W, V) view.
inline std::pair<int64_t, int64_t> planes_and_vec(const at::Tensor& t, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::ChannelsLast) return {t.size(0), t.size(1)};
  return {t.size(0) * t.size(1), 1};
}

at::Tensor conv_transpose2d_crop_cpu(const at::Tensor& self, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias_opt,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation, at::IntArrayRef offset,
                                     at::IntArrayRef size) {
  check_float4d(self, "input");
  check_float4d(weight, "weight");
  check_same(self, weight, "input and weight");
  check_deconv(self.sizes(), weight.sizes(), stride, padding, groups, dilation, offset);
  TORCH_CHECK(output_padding.size() == 2 && size.size() == 2,
              "output_padding and size must have 2 elements");
  const int64_t N = self.size(0), IH = self.size(2), IW = self.size(3);
  const int64_t KH = weight.size(2), KW = weight.size(3), cout_g = weight.size(1);
  const int64_t Cout = cout_g * groups, OH = size[0], OW = size[1];
  for (int a = 0; a < 2; ++a) {
    const int64_t full = deconv_full_size(self.size(2 + a), weight.size(2 + a), stride[a],
                                          padding[a], dilation[a], output_padding[a]);
    TORCH_CHECK(size[a] > 0 && offset[a] + size[a] <= full, "crop window offset ", offset,
                " size ", size, " does not fit the full output of size ", full,
                " along dimension ", 2 + a);
  }
  at::Tensor bias;
  if (bias_opt.has_value() && bias_opt->defined()) {
    bias = *bias_opt;
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == Cout && bias.scalar_type() == self.scalar_type()
                    && bias.device() == self.device(),
                "bias must be a 1-D tensor of ", Cout, " elements with the input's dtype");
    bias = bias.to(acc_type_of(bias.scalar_type())).contiguous();
  }
  const auto fmt = layout_of(self);
  at::Tensor y = at::empty({N, Cout, OH, OW}, self.options().memory_format(fmt));
  if (y.numel() == 0) return y;

  if (is_channel_diagonal_cpu(weight, groups)) {
    const at::Tensor x = self.contiguous(fmt);
    const at::Tensor wd = diagonal_weight(weight, groups);
    const Taps th = source_taps(OH, offset[0], 0, KH, stride[0], padding[0], dilation[0], IH);
    const Taps tw = source_taps(OW, offset[1], 0, KW, stride[1], padding[1], dilation[1], IW);
    const auto [P, V] = planes_and_vec(x, fmt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "deconv_diag_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      diagonal_gather<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                wd.const_data_ptr<acc_t>(),
                                bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr, P,
                                Cout, IH, IW, OH, OW, V, KH, KW, th, tw, /*forward=*/true,
                                {stride[1], dilation[1], padding[1], offset[1]});
    });
    return y;
  }

  const at::Tensor xg = grouped_input(self, groups);  // (G, Cin_g, N*L)
  const int64_t cin_g = xg.size(1);
  const at::Tensor wp = weight.to(xg.scalar_type())
                            .reshape({groups, cin_g, cout_g, KH, KW})
                            .permute({0, 3, 2, 4, 1})
                            .contiguous();  // (G, KH, Cout_g, KW, Cin_g)
  // Accumulate straight into y when it already has the accumulation type.
  at::Tensor acc = y.scalar_type() == xg.scalar_type()
                       ? y
                       : at::empty(y.sizes(), xg.options().memory_format(fmt));
  const Taps tw = source_taps(OW, offset[1], 0, KW, stride[1], padding[1], dilation[1], IW);
  const int64_t L = IH * IW;
  const int64_t kc = rows_per_chunk(Cout * KW * N * L, std::max<int64_t>(y.numel(), 1 << 20), KH);
  const std::vector<int64_t> ys(acc.strides().begin(), acc.strides().end());
  for (int64_t k0 = 0; k0 < KH; k0 += kc) {
    const int64_t k1 = std::min(KH, k0 + kc), R = (k1 - k0) * cout_g * KW;
    const at::Tensor col = at::bmm(wp.slice(1, k0, k1).reshape({groups, R, cin_g}), xg);
    const Taps th = source_taps(OH, offset[0], k0, k1, stride[0], padding[0], dilation[0], IH);
    AT_DISPATCH_FLOATING_TYPES(col.scalar_type(), "deconv_col2im_cpu", [&] {
      col2im_crop<scalar_t>(col.const_data_ptr<scalar_t>(), acc.mutable_data_ptr<scalar_t>(),
                            ys.data(), k0 == 0,
                            bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, N,
                            Cout, cout_g, R, OH, OW, L, IW, KW, k0, th, tw);
    });
  }
  if (!acc.is_same(y)) y.copy_(acc);
  return y;
}

at::Tensor conv_transpose2d_crop_backward_input_cpu(
    const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, at::IntArrayRef offset) {
  TORCH_CHECK(input_size.size() == 4, "input_size must have 4 elements");
  check_float4d(grad_output, "grad_output");
  check_float4d(weight, "weight");
  check_same(grad_output, weight, "grad_output and weight");
  check_deconv(input_size, weight.sizes(), stride, padding, groups, dilation, offset);
  const int64_t N = input_size[0], Cin = input_size[1], IH = input_size[2], IW = input_size[3];
  const int64_t KH = weight.size(2), KW = weight.size(3), cout_g = weight.size(1);
  const int64_t Cout = cout_g * groups, OH = grad_output.size(2), OW = grad_output.size(3);
  TORCH_CHECK(grad_output.size(0) == N && grad_output.size(1) == Cout,
              "grad_output shape ", grad_output.sizes(), " does not match input_size ",
              input_size, " and weight ", weight.sizes());
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
      diagonal_gather<scalar_t>(g.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
                                wd.const_data_ptr<acc_t>(), nullptr, P, Cin, OH, OW, IH, IW,
                                V, KH, KW, th, tw, /*forward=*/false,
                                {stride[1], dilation[1], padding[1], offset[1]});
    });
    return gx;
  }

  const auto acc_t_ = acc_type_of(weight.scalar_type());
  const int64_t cin_g = Cin / groups, L = IH * IW;
  const at::Tensor wb = weight.to(acc_t_)
                            .reshape({groups, cin_g, cout_g, KH, KW})
                            .permute({0, 1, 3, 2, 4})
                            .contiguous();  // (G, Cin_g, KH, Cout_g, KW)
  at::Tensor gxg = at::empty({groups, cin_g, N * L}, weight.options().dtype(acc_t_));
  const int64_t kc = rows_per_chunk(Cout * KW * N * L, std::max<int64_t>(grad_output.numel(), 1 << 20), KH);
  const std::vector<int64_t> gs(grad_output.strides().begin(), grad_output.strides().end());
  for (int64_t k0 = 0; k0 < KH; k0 += kc) {
    const int64_t k1 = std::min(KH, k0 + kc), R = (k1 - k0) * cout_g * KW;
    at::Tensor gcol = at::empty({groups, R, N * L}, gxg.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "deconv_im2col_cpu", [&] {
      im2col_crop<scalar_t>(grad_output.const_data_ptr<scalar_t>(), gs.data(),
                            gcol.mutable_data_ptr<at::opmath_type<scalar_t>>(), groups, N,
                            cout_g, R, IH, IW, KW, k0, OH, OW, stride.data(), padding.data(),
                            dilation.data(), offset.data());
    });
    const at::Tensor wc = wb.slice(2, k0, k1).reshape({groups, cin_g, R});
    if (k0 == 0) {
      at::bmm_out(gxg, wc, gcol);
    } else {
      gxg.baddbmm_(wc, gcol);
    }
  }
  gx.copy_(gxg.view({groups, cin_g, N, IH, IW}).permute({2, 0, 1, 3, 4}).reshape({N, Cin, IH, IW}));
  return gx;
}

at::Tensor conv_transpose2d_crop_backward_weight_cpu(
    const at::Tensor& grad_output, const at::Tensor& self, at::IntArrayRef weight_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, at::IntArrayRef offset) {
  TORCH_CHECK(weight_size.size() == 4, "weight_size must have 4 elements");
  check_float4d(grad_output, "grad_output");
  check_float4d(self, "input");
  check_same(grad_output, self, "grad_output and input");
  check_deconv(self.sizes(), weight_size, stride, padding, groups, dilation, offset);
  const int64_t N = self.size(0), IH = self.size(2), IW = self.size(3);
  const int64_t KH = weight_size[2], KW = weight_size[3], cout_g = weight_size[1];
  const int64_t Cout = cout_g * groups, OH = grad_output.size(2), OW = grad_output.size(3);
  TORCH_CHECK(grad_output.size(0) == N && grad_output.size(1) == Cout,
              "grad_output shape ", grad_output.sizes(), " does not match input ",
              self.sizes(), " and weight_size ", weight_size);
  if (N == 0 || OH == 0 || OW == 0 || Cout == 0) {
    return at::zeros(weight_size, self.options());
  }
  const at::Tensor xg = grouped_input(self, groups);  // (G, Cin_g, N*L)
  const int64_t cin_g = xg.size(1), L = IH * IW;
  at::Tensor gwp = at::empty({groups, cin_g, KH, cout_g, KW}, xg.options());
  const int64_t kc = rows_per_chunk(Cout * KW * N * L, std::max<int64_t>(grad_output.numel(), 1 << 20), KH);
  const std::vector<int64_t> gs(grad_output.strides().begin(), grad_output.strides().end());
  for (int64_t k0 = 0; k0 < KH; k0 += kc) {
    const int64_t k1 = std::min(KH, k0 + kc), R = (k1 - k0) * cout_g * KW;
    at::Tensor gcol = at::empty({groups, R, N * L}, xg.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "deconv_im2col_w_cpu", [&] {
      im2col_crop<scalar_t>(grad_output.const_data_ptr<scalar_t>(), gs.data(),
                            gcol.mutable_data_ptr<at::opmath_type<scalar_t>>(), groups, N,
                            cout_g, R, IH, IW, KW, k0, OH, OW, stride.data(), padding.data(),
                            dilation.data(), offset.data());
    });
    gwp.slice(2, k0, k1).copy_(
        at::bmm(xg, gcol.transpose(1, 2)).view({groups, cin_g, k1 - k0, cout_g, KW}));
  }
  return gwp.permute({0, 1, 3, 2, 4})
      .reshape(weight_size)
      .to(self.scalar_type())
      .contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CPU, m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_cpu);
  m.impl("conv_transpose2d_crop_backward_input", &conv_transpose2d_crop_backward_input_cpu);
  m.impl("conv_transpose2d_crop_backward_weight", &conv_transpose2d_crop_backward_weight_cpu);
}

}  // namespace fcn_kernels
