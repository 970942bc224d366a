// conv_transpose2d_crop on the GPU: the host side, a template on the launcher L
// (gpu/launch.h), instantiated for CUDA in deconv/cuda.cu and for the CPU emulation in
// deconv/emu.cpp. Kernel bodies: deconv/gpu_kernels.h.
//
// Two paths, chosen from the shapes and requires_grad alone (never from the weight's
// values, which would need a host sync):
// * gather (square channel blocks, cin_g == cout_g, with few multiply-adds per output,
//   not trained unless depthwise: FCN's fixed 21->21 upsampling weights, depthwise
//   ones; see use_gather): a small kernel decides on the device, on every call,
//   whether the weight is channel-diagonal (DiagCheckKernel; nothing is cached, as a
//   write through `.data` or an alias would leave a cache stale), and the gather
//   kernels read its flags: one channel per output (diagonal) or the group's cin_g.
//   Deterministic always (no atomics; the weight gradient is a fixed-order tree).
// * dense (anything else): ATen's convolution (cuDNN on a GPU) arranged so that its
//   output is the crop, the padding raised by m = min(offset, tail) per axis so that
//   the uncropped map is never computed; the gradients likewise. Its determinism
//   follows torch's settings (under torch.use_deterministic_algorithms(True) cuDNN
//   picks deterministic algorithms).
// Variants chosen at run time (deconv/variant.h): float16/bfloat16 on the dense path
// instead of the gather (FCN_KERNELS_DECONV_LOWP=cudnn), and the gather path's input
// gradient by a shared-memory tile kernel (FCN_KERNELS_DECONV_GRAD_INPUT=tile,
// deconv/gpu_tile.h). Each path is named in the profiler (RECORD_FUNCTION
// "fcn_kernels::deconv_<op>_<path>"), so a trace or a test can tell which one ran.
#pragma once

#include <ATen/Dispatch.h>
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include "deconv/args.h"
#include "deconv/gpu_kernels.h"
#include "deconv/gpu_tile.h"
#include "deconv/variant.h"
#include "gpu/launch.h"

namespace fcn_kernels {
namespace deconv_gpu {

// Square blocks take the gather kernels up to this many multiply-adds per output
// (cin_g x taps reaching one output pixel): FCN's 21-class upsampling has 21 x 4 = 84.
// Past it a weight that turns out not to be diagonal would run a long CUDA-core loop,
// where cuDNN's tensor-core GEMMs win.
constexpr int64_t kGatherMaxMacs = 128;
constexpr int kThreadsX = 32, kThreadsY = 8;

// Taps per output pixel along one axis: ceil(K / (s / gcd(s, d))).
inline int64_t taps_per_output(int64_t K, int64_t s, int64_t d) {
  const int64_t step = s / std::gcd(s, d);
  return (K + step - 1) / step;
}

inline bool gather_fits(int64_t cin_g, int64_t cout_g, int64_t KH, int64_t KW,
                        at::IntArrayRef stride, at::IntArrayRef dilation) {
  if (cin_g != cout_g || cin_g == 0) return false;
  const int64_t macs = cin_g * taps_per_output(KH, stride[0], dilation[0]) *
                       taps_per_output(KW, stride[1], dilation[1]);
  return macs <= kGatherMaxMacs;
}

// A weight autograd is training (requires_grad) takes the dense path unless depthwise:
// learned square weights are dense in practice (FCN's upscore2 / upscore_pool4 start
// as the bilinear filter and leave the diagonal at the first step), and there cuDNN
// wins. FCN's fixed upsampling weights are frozen. Only speed depends on this choice.
// With FCN_KERNELS_DECONV_LOWP=cudnn, float16/bfloat16 take the dense path (tensor cores).
inline bool use_gather(const at::Tensor& weight, int64_t cin_g, int64_t cout_g, int64_t KH,
                       int64_t KW, at::IntArrayRef stride, at::IntArrayRef dilation,
                       const Variants& variants, at::ScalarType dtype) {
  if (cin_g > 1 && weight.requires_grad()) return false;
  if (variants.lowp_cudnn && (dtype == at::kHalf || dtype == at::kBFloat16)) return false;
  return gather_fits(cin_g, cout_g, KH, KW, stride, dilation);
}

// The largest coordinate-sized intermediate of the tap math along one axis.
inline int64_t coord_extent(int64_t in, int64_t out, int64_t K, int64_t s, int64_t p, int64_t d,
                            int64_t off) {
  return (in + 1) * s + (K + 1) * d + p + off + out + s * s;
}

inline int64_t mod_inverse(int64_t a, int64_t m) {  // a^-1 mod m, gcd(a, m) == 1
  if (m == 1) return 0;
  int64_t r0 = m, r1 = a % m, t0 = 0, t1 = 1;
  while (r1 != 0) {
    const int64_t qt = r0 / r1;
    std::tie(r0, r1) = std::make_pair(r1, r0 - qt * r1);
    std::tie(t0, t1) = std::make_pair(t1, t0 - qt * t1);
  }
  return (t0 % m + m) % m;
}

template <typename index_t>
Axis<index_t> make_axis(int64_t in, int64_t out, int64_t K, int64_t s, int64_t p, int64_t d,
                        int64_t off) {
  const int64_t g = std::gcd(s, d), step = s / g, dg = d / g;
  return {index_t(in),
          index_t(out),
          index_t(K),
          index_t(s),
          index_t(p),
          index_t(d),
          index_t(off),
          index_t(g),
          index_t(step),
          index_t(dg),
          index_t(mod_inverse(dg % step, step))};
}

template <typename index_t>
void set_strides(index_t* dst, const at::Tensor& t) {
  for (int a = 0; a < 4; ++a) dst[a] = index_t(t.stride(a));
}

// The tap geometry shared by every gather kernel's parameters: both axes (ay, ax) of
// input in_hw and crop out_hw, and (KH, KW) taps between groups of cin_g input and cout_g
// output channels.
template <typename K>
void set_geometry(K& kernel, at::IntArrayRef in_hw, at::IntArrayRef out_hw, int64_t KH, int64_t KW,
                  int64_t cin_g, int64_t cout_g, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation, at::IntArrayRef offset) {
  using index_t = decltype(kernel.ay.in);
  kernel.ay =
      make_axis<index_t>(in_hw[0], out_hw[0], KH, stride[0], padding[0], dilation[0], offset[0]);
  kernel.ax =
      make_axis<index_t>(in_hw[1], out_hw[1], KW, stride[1], padding[1], dilation[1], offset[1]);
  kernel.cin_g = index_t(cin_g);
  kernel.cout_g = index_t(cout_g);
  kernel.KH = index_t(KH);
  kernel.KW = index_t(KW);
}

// The forward / input-gradient kernels' parameters (set_geometry) and the element
// strides of the tensor read and of the tensor written.
template <typename index_t>
Geom<index_t> gather_geom(at::IntArrayRef in_hw, at::IntArrayRef out_hw, int64_t KH, int64_t KW,
                          int64_t cin_g, int64_t cout_g, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef offset,
                          const at::Tensor& read, const at::Tensor& written) {
  Geom<index_t> q{};
  set_geometry(q, in_hw, out_hw, KH, KW, cin_g, cout_g, stride, padding, dilation, offset);
  set_strides(q.rs, read);
  set_strides(q.ws, written);
  return q;
}

// `t` with exactly the strides at::empty(sizes, fmt) would give (what the fake kernels
// in fcn_kernels/ promise), copied only when it has others.
inline at::Tensor in_layout(const at::Tensor& t, at::MemoryFormat fmt) {
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  const std::array<int64_t, 4> want = fmt == at::MemoryFormat::ChannelsLast
                                          ? std::array<int64_t, 4>{H * W * C, 1, W * C, C}
                                          : std::array<int64_t, 4>{C * H * W, H * W, W, 1};
  if (t.strides().vec() == std::vector<int64_t>(want.begin(), want.end())) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(fmt));
  out.copy_(t);
  return out;
}

// Gather-kernel launch geometry over a written tensor of (N, C, H, W) in `fmt`: grid.x
// covers a row's (pixel, v) pairs, grid.y the rows, grid.z slices of the planes so that
// even small maps fill the GPU.
template <typename L, typename index_t>
Dim gather_grid(Geom<index_t>& q, int64_t N, int64_t C, int64_t H, int64_t W,
                at::MemoryFormat fmt) {
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  q.C = index_t(C);
  q.V = index_t(cl ? C : 1);
  q.cq = index_t(cl ? 1 : C);
  q.Q = index_t(N * q.cq);
  Dim grid;
  grid.x = ceil_div_u32(W * q.V, kThreadsX);
  grid.y = static_cast<uint32_t>(std::min<int64_t>((H + kThreadsY - 1) / kThreadsY, kMaxGridYZ));
  const int64_t xy = int64_t(grid.x) * grid.y;
  const int64_t want = (4 * int64_t(L::sm_count()) + xy - 1) / xy;
  grid.z = static_cast<uint32_t>(std::max<int64_t>(1, std::min({want, int64_t(q.Q), kMaxGridYZ})));
  q.step_n = index_t(grid.z / q.cq);
  q.step_c = index_t(grid.z % q.cq);
  return grid;
}

// The gather paths' view of the weight: no flags and the weight itself for depthwise
// weights, else DiagCheckKernel's flags (on the device, launched on every call: see
// there) and the diagonal filters, in one allocation (flags first, 16-byte aligned).
template <typename L>
std::pair<const uint8_t*, at::Tensor> diagonal_check(const at::Tensor& w, int64_t cin_g) {
  if (cin_g == 1) return {nullptr, w};
  const int64_t rows = w.size(0) * cin_g, KK = w.size(2) * w.size(3);
  const int64_t flag_elems = kDiagBlocks / w.element_size();
  at::Tensor buf = at::empty({flag_elems + w.size(0) * KK}, w.options());
  uint8_t* flags = static_cast<uint8_t*>(buf.mutable_data_ptr());
  at::Tensor wd = buf.narrow(0, flag_elems, w.size(0) * KK);
  // Threads along the taps: the power of two >= KK (at most all of them), the rest of
  // the block along the rows.
  uint32_t tx = 1;
  while (tx < KK && tx < uint32_t(kDiagThreads)) tx *= 2;
  const Dim block{tx, uint32_t(kDiagThreads) / tx, 1};
  const int64_t step = int64_t(kDiagBlocks) * block.y;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, w.scalar_type(), "deconv_diag_check", [&] {
        with_index_type(fits_int32({w.numel()}), [&](auto zero) {
          using index_t = decltype(zero);
          L::launch("deconv_diag_check", Dim{kDiagBlocks, 1, 1}, block, kDiagThreads * sizeof(int),
                    DiagCheckKernel<scalar_t, index_t>{
                        w.const_data_ptr<scalar_t>(), wd.mutable_data_ptr<scalar_t>(), flags,
                        index_t(rows), index_t(KK), index_t(cin_g), index_t(step / cin_g),
                        index_t((step / cin_g) % cin_g), index_t(step % cin_g)});
        });
      });
  return {flags, wd};
}

// ---------------------------------------------------------------------------------
// Dense path: ATen's convolution computing just the crop. Per axis, the crop starts
// `off` into the full map and leaves `tail` at its end; raising the padding by
// m = min(off, tail) drops m from both ends, so only (off - m) at the start or
// (tail - m) at the end remain to be narrowed away. The padding handed to ATen stays
// within d*(K-1), where the equivalent direct convolution's padding is still >= 0:
// beyond it oneDNN's bfloat16 kernels crash and cuDNN need not accept it (m may then be
// negative: the user's own padding is partly undone and narrowed instead).
// ---------------------------------------------------------------------------------
struct DenseAxes {
  std::vector<int64_t> pad, lead, trail, out_pad;  // padding + m, off - m, tail - m, op
};

// For the gradients (the backward ops are not told the forward's output_padding): G' is
// grad zero-extended by lead/trail, starting at full-map coordinate m and covering at
// least the map without output_padding (full0 - 2m), so a convolution of it with padding
// `pad` yields every input row; out_pad (< stride, as the crop extended at most that far
// into the output_padding) makes the transposed convolution's size match G'.
inline DenseAxes dense_axes(at::IntArrayRef in, at::IntArrayRef out, at::IntArrayRef K,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, at::IntArrayRef offset) {
  DenseAxes r;
  for (int a = 0; a < 2; ++a) {
    const int64_t full0 = deconv_full_size(in[a], K[a], stride[a], padding[a], dilation[a], 0);
    const int64_t tail = full0 - offset[a] - out[a];
    const int64_t m =
        std::min({offset[a], std::max<int64_t>(tail, 0), dilation[a] * (K[a] - 1) - padding[a]});
    r.pad.push_back(padding[a] + m);
    r.lead.push_back(offset[a] - m);
    r.trail.push_back(std::max<int64_t>(0, full0 - 2 * m - (offset[a] - m) - out[a]));
    r.out_pad.push_back(out[a] + r.lead[a] + r.trail[a] - (full0 - 2 * m));
  }
  return r;
}

inline at::Tensor dense_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef output_padding, int64_t groups,
                                at::IntArrayRef dilation, at::IntArrayRef offset,
                                at::IntArrayRef size, at::MemoryFormat fmt) {
  std::vector<int64_t> pad, start;
  for (int a = 0; a < 2; ++a) {
    const int64_t full = deconv_full_size(x.size(2 + a), w.size(2 + a), stride[a], padding[a],
                                          dilation[a], output_padding[a]);
    const int64_t m = std::min(
        {offset[a], full - offset[a] - size[a], dilation[a] * (w.size(2 + a) - 1) - padding[a]});
    pad.push_back(padding[a] + m);
    start.push_back(offset[a] - m);
  }
  const at::Tensor y =
      at::convolution(x, w, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt, stride,
                      pad, dilation, /*transposed=*/true, output_padding, groups);
  return in_layout(y.narrow(2, start[0], size[0]).narrow(3, start[1], size[1]), fmt);
}

// The operands handed to ATen's convolution. Emulated, that convolution is ATen's CPU
// one standing in for cuDNN, so it gets NCHW operands (its bfloat16 channels_last
// grouped kernels return wrong values when an output dimension is 1) and computes
// float16/bfloat16 in float32, as cuDNN accumulates (oneDNN's bfloat16 kernels read
// uninitialized memory in some geometries on AVX-512/AMX CPUs: values of 1e36 or NaN in
// tests/test_fuzz.py; torch 2.14.1); callers round the result back to their dtype.
template <typename L>
at::Tensor dense_operand(const at::Tensor& t) {
  if (!L::kEmulated || !t.defined()) return t;
  const at::Tensor c = t.contiguous();
  return at::isReducedFloatingType(c.scalar_type()) ? c.to(at::kFloat) : c;
}

// grad zero-extended to G' (only by what the forward's narrowing removed).
inline at::Tensor dense_grad(const at::Tensor& grad, const DenseAxes& r) {
  if (r.lead[0] == 0 && r.lead[1] == 0 && r.trail[0] == 0 && r.trail[1] == 0) return grad;
  return at::constant_pad_nd(grad, {r.lead[1], r.trail[1], r.lead[0], r.trail[0]}, 0);
}

// ---------------------------------------------------------------------------------
// The three operators.
// ---------------------------------------------------------------------------------
template <typename L>
at::Tensor conv_transpose2d_crop_gpu(const at::Tensor& self, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias_opt,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation, at::IntArrayRef offset,
                                     at::IntArrayRef size) {
  check_deconv_forward(self, weight, bias_opt, stride, padding, output_padding, groups, dilation,
                       offset, size);
  typename L::Guard device_guard(self.device());
  const int64_t N = self.size(0), Cin = self.size(1), cin_g = Cin / groups;
  const int64_t cout_g = weight.size(1), Cout = cout_g * groups;
  const int64_t KH = weight.size(2), KW = weight.size(3);
  const at::Tensor bias =
      bias_opt.has_value() && bias_opt->defined() ? bias_opt->contiguous() : at::Tensor();
  const auto fmt = layout_of(self);
  const auto opts = self.options().memory_format(fmt);
  if (N == 0) return at::empty({N, Cout, size[0], size[1]}, opts);
  if (Cin == 0) {  // no input channel contributes: the bias alone
    at::Tensor y = at::zeros({N, Cout, size[0], size[1]}, opts);
    return bias.defined() ? y.add_(bias.view({1, Cout, 1, 1})) : y;
  }
  const at::Tensor w = weight.contiguous();
  const Variants variants = read_variants();
  if (!use_gather(weight, cin_g, cout_g, KH, KW, stride, dilation, variants, self.scalar_type())) {
    RECORD_FUNCTION("fcn_kernels::deconv_forward_dense", std::vector<c10::IValue>());
    return dense_forward(dense_operand<L>(self), dense_operand<L>(w), dense_operand<L>(bias),
                         stride, padding, output_padding, groups, dilation, offset, size, fmt)
        .to(self.scalar_type());
  }
  const std::pair<const uint8_t*, at::Tensor> fw = diagonal_check<L>(w, cin_g);
  const uint8_t* offdiag = fw.first;
  const at::Tensor& wd = fw.second;
  RECORD_FUNCTION("fcn_kernels::deconv_forward_gather", std::vector<c10::IValue>());
  at::Tensor y = at::empty({N, Cout, size[0], size[1]}, opts);
  const bool small = fits_int32(
      {element_span(self), y.numel(), w.numel(),
       coord_extent(self.size(2), size[0], KH, stride[0], padding[0], dilation[0], offset[0]),
       coord_extent(self.size(3), size[1], KW, stride[1], padding[1], dilation[1], offset[1])});
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, self.scalar_type(), "deconv_fwd_gpu", [&] {
        with_index_type(small, [&](auto zero) {
          using index_t = decltype(zero);
          Geom<index_t> q = gather_geom<index_t>(self.sizes().slice(2), size, KH, KW, cin_g, cout_g,
                                                 stride, padding, dilation, offset, self, y);
          const Dim grid = gather_grid<L>(q, N, Cout, size[0], size[1], fmt);
          L::launch("deconv_forward", grid, Dim{kThreadsX, kThreadsY, 1}, 0,
                    ForwardKernel<scalar_t, index_t>{
                        self.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                        wd.const_data_ptr<scalar_t>(),
                        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, offdiag,
                        y.mutable_data_ptr<scalar_t>(), q});
        });
      });
  return y;
}

template <typename L>
at::Tensor conv_transpose2d_crop_backward_input_gpu(const at::Tensor& grad_output,
                                                    const at::Tensor& weight,
                                                    at::IntArrayRef input_size,
                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                    int64_t groups, at::IntArrayRef dilation,
                                                    at::IntArrayRef offset) {
  check_deconv_backward_input(grad_output, weight, input_size, stride, padding, groups, dilation,
                              offset);
  typename L::Guard device_guard(grad_output.device());
  const int64_t N = input_size[0], Cin = input_size[1], cin_g = Cin / groups;
  const int64_t cout_g = weight.size(1), KH = weight.size(2), KW = weight.size(3);
  const int64_t OH = grad_output.size(2), OW = grad_output.size(3);
  const auto fmt = layout_of(grad_output);
  at::Tensor gx = at::empty(input_size, grad_output.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  if (OH == 0 || OW == 0) return gx.zero_();
  const at::Tensor w = weight.contiguous();
  const Variants variants = read_variants();
  if (!use_gather(weight, cin_g, cout_g, KH, KW, stride, dilation, variants,
                  grad_output.scalar_type())) {
    RECORD_FUNCTION("fcn_kernels::deconv_backward_input_dense", std::vector<c10::IValue>());
    const DenseAxes r = dense_axes(input_size.slice(2), grad_output.sizes().slice(2),
                                   w.sizes().slice(2), stride, padding, dilation, offset);
    // The adjoint of the transposed convolution: a convolution of G' (only the first
    // input_size rows/columns when output_padding >= stride left extra ones).
    const at::Tensor full = at::convolution(dense_operand<L>(dense_grad(grad_output, r)),
                                            dense_operand<L>(w), std::nullopt, stride, r.pad,
                                            dilation, /*transposed=*/false, {0, 0}, groups);
    return in_layout(full.narrow(2, 0, input_size[2]).narrow(3, 0, input_size[3]), fmt)
        .to(grad_output.scalar_type());
  }
  const std::pair<const uint8_t*, at::Tensor> fw = diagonal_check<L>(w, cin_g);
  const uint8_t* offdiag = fw.first;
  const at::Tensor& wd = fw.second;
  const int64_t tile_ty = variants.grad_input_tile
                              ? tile_rows(KH, KW, stride, dilation, grad_output.element_size())
                              : 0;
  RECORD_FUNCTION(tile_ty > 0 ? "fcn_kernels::deconv_backward_input_tile"
                              : "fcn_kernels::deconv_backward_input_gather",
                  std::vector<c10::IValue>());
  const bool small = fits_int32(
      {element_span(grad_output), gx.numel(), w.numel(),
       coord_extent(input_size[2], OH, KH, stride[0], padding[0], dilation[0], offset[0]),
       coord_extent(input_size[3], OW, KW, stride[1], padding[1], dilation[1], offset[1])});
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "deconv_bwd_input_gpu", [&] {
        with_index_type(small, [&](auto zero) {
          using index_t = decltype(zero);
          // grad_output in any layout, expanded (stride 0) included
          Geom<index_t> q =
              gather_geom<index_t>(input_size.slice(2), grad_output.sizes().slice(2), KH, KW, cin_g,
                                   cout_g, stride, padding, dilation, offset, grad_output, gx);
          BackwardInputKernel<scalar_t, index_t> k{
              grad_output.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
              wd.const_data_ptr<scalar_t>(),          offdiag,
              gx.mutable_data_ptr<scalar_t>(),        q};
          if (tile_ty > 0) {
            launch_tile_grad_input<L>(k, N, Cin, tile_ty);
            return;
          }
          const Dim grid = gather_grid<L>(k.q, N, Cin, input_size[2], input_size[3], fmt);
          L::launch("deconv_backward_input", grid, Dim{kThreadsX, kThreadsY, 1}, 0, k);
        });
      });
  return gx;
}

// Slices of each weight element's (n, iy) rows: enough blocks to fill a GPU, each
// slice still a few thousand terms. Fixed by the shapes (not the device), so the bits
// are the same on every GPU.
inline int64_t wgrad_slices(int64_t weights, int64_t rows, int64_t cols) {
  constexpr int64_t kTargetBlocks = 1024, kMinTerms = 4096;
  const int64_t want = (kTargetBlocks + weights - 1) / weights;
  const int64_t most = std::max<int64_t>(1, rows * cols / kMinTerms);
  return std::max<int64_t>(1, std::min({want, most, rows, kMaxGridYZ}));
}

template <typename L>
at::Tensor conv_transpose2d_crop_backward_weight_gpu(
    const at::Tensor& grad_output, const at::Tensor& self, at::IntArrayRef weight_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups, at::IntArrayRef dilation,
    at::IntArrayRef offset) {
  check_deconv_backward_weight(grad_output, self, weight_size, stride, padding, groups, dilation,
                               offset);
  typename L::Guard device_guard(self.device());
  const int64_t N = self.size(0), Cin = self.size(1), cin_g = Cin / groups;
  const int64_t cout_g = weight_size[1], KH = weight_size[2], KW = weight_size[3];
  const int64_t numel = Cin * cout_g * KH * KW;
  // No weight elements (0 input channels): nothing to launch (a grid of 0 blocks is an
  // invalid launch). No terms: zeros.
  if (numel == 0) return at::empty(weight_size, self.options());
  if (N == 0 || grad_output.numel() == 0) return at::zeros(weight_size, self.options());
  // The gradient of any weight is dense, so the diagonal flag does not help here; the
  // block-per-weight-element reduction re-reads grad_output once per (ci, tap) pair,
  // cin_g x taps times (84 for FCN's 21-class upscore8: far more bytes than cuDNN's
  // implicit GEMM), so it is used for depthwise weights only.
  if (cin_g != 1 || !gather_fits(cin_g, cout_g, KH, KW, stride, dilation)) {
    const DenseAxes r = dense_axes(self.sizes().slice(2), grad_output.sizes().slice(2),
                                   weight_size.slice(2), stride, padding, dilation, offset);
    // Only the weight's sizes matter, but ATen's CPU bfloat16 kernel (torch 2.14.1,
    // AVX-512) reads its values in some geometries: zeros, never uninitialized memory.
    const at::Tensor w_like = dense_operand<L>(at::zeros(weight_size, self.options()));
    const auto grads = at::convolution_backward(
        dense_operand<L>(dense_grad(grad_output, r)), dense_operand<L>(self), w_like, std::nullopt,
        stride, r.pad, dilation,
        /*transposed=*/true, r.out_pad, groups, {false, true, false});
    return in_layout(std::get<1>(grads), at::MemoryFormat::Contiguous).to(self.scalar_type());
  }
  at::Tensor gw = at::empty(weight_size, self.options());
  const int64_t S = wgrad_slices(numel, N * self.size(2), self.size(3));
  const bool small = fits_int32({element_span(self), element_span(grad_output), numel,
                                 coord_extent(self.size(2), grad_output.size(2), KH, stride[0],
                                              padding[0], dilation[0], offset[0]),
                                 coord_extent(self.size(3), grad_output.size(3), KW, stride[1],
                                              padding[1], dilation[1], offset[1])});
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, self.scalar_type(), "deconv_bwd_weight_gpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        at::Tensor partial;
        if (S > 1)
          partial =
              at::empty({numel * S}, self.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        with_index_type(small, [&](auto zero) {
          using index_t = decltype(zero);
          WeightGradKernel<scalar_t, index_t> k{};
          k.grad = grad_output.const_data_ptr<scalar_t>();
          k.x = self.const_data_ptr<scalar_t>();
          k.gw = gw.mutable_data_ptr<scalar_t>();
          k.partial = S > 1 ? partial.mutable_data_ptr<acc_t>() : nullptr;
          set_geometry(k, self.sizes().slice(2), grad_output.sizes().slice(2), KH, KW, cin_g,
                       cout_g, stride, padding, dilation, offset);
          k.N = index_t(N);
          k.S = index_t(S);
          set_strides(k.gs, grad_output);
          set_strides(k.xs, self);
          L::launch("deconv_backward_weight", Extent{numel, S}, Extent{kWgradX, kWgradY},
                    kWgradThreads * sizeof(acc_t), k);
          if (S > 1) {
            L::launch("deconv_backward_weight_finish", Extent{ceil_div(numel, 256)}, Extent{256}, 0,
                      WeightGradFinishKernel<scalar_t, index_t>{partial.const_data_ptr<acc_t>(),
                                                                gw.mutable_data_ptr<scalar_t>(),
                                                                index_t(numel), index_t(S)});
          }
        });
      });
  return gw;
}

// The three operators' registrations, for the launcher's library and dispatch key
// (deconv/cuda.cu: fcn_kernels/CUDA, deconv/emu.cpp: fcn_kernels_emu/CPU).
template <typename L>
void register_ops(torch::Library& m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_gpu<L>);
  m.impl("conv_transpose2d_crop_backward_input", &conv_transpose2d_crop_backward_input_gpu<L>);
  m.impl("conv_transpose2d_crop_backward_weight", &conv_transpose2d_crop_backward_weight_gpu<L>);
}

}  // namespace deconv_gpu
}  // namespace fcn_kernels
