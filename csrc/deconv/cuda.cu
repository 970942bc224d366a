// Fused transposed convolution + crop on CUDA: direct gather kernels.
//
// Forward: one thread per cropped output element gathers its taps (deconv_source, the
// same index math the CPU path and its tests use). Backward-input: one thread per input
// element gathers the cropped outputs it reaches (deconv_target). Backward-weight: one
// thread per weight element reduces over (n, iy, ix) in a fixed order. No atomics and
// no cuBLAS, so results are bit-identical on every run (also under
// torch.use_deterministic_algorithms). A channel-diagonal weight (FCN's bilinear
// upsampling) restricts the channel loop to the one matching channel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "deconv/args.h"
#include "gpu/launch.cuh"

namespace fcn_kernels {
namespace {

struct Geom {
  int64_t N, cin_g, cout_g, C;   // C: channels of the tensor the thread writes
  int64_t IH, IW, OH, OW, KH, KW;
  int64_t s[2], p[2], d[2], off[2];
  int64_t as[4], bs[4];  // element strides of the two read tensors
  bool cl, diag;         // thread order channels_last; channel-diagonal weight
};

// Decompose a linear index of a tensor (N, C, H, W) stored in NCHW or channels_last.
template <typename index_t>
__device__ __forceinline__ void unravel(index_t idx, const Geom& q, int64_t H, int64_t W,
                                        int64_t& n, int64_t& c, int64_t& h, int64_t& w) {
  int64_t t = idx;
  if (q.cl) {
    c = t % q.C; t /= q.C; w = t % W; t /= W; h = t % H; n = t / H;
  } else {
    w = t % W; t /= W; h = t % H; t /= H; c = t % q.C; n = t / q.C;
  }
}

// y[n, co, oh, ow] = bias[co] + sum_{ci, ky, kx} x[n, ci, iy, ix] * w[ci, j, ky, kx].
template <typename scalar_t, typename index_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
                               index_t total, Geom q) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    int64_t n, co, oh, ow;
    unravel(idx, q, q.OH, q.OW, n, co, oh, ow);
    const int64_t g = co / q.cout_g, j = co % q.cout_g;
    const int64_t c0 = q.diag ? co : g * q.cin_g, c1 = q.diag ? co + 1 : c0 + q.cin_g;
    acc_t acc = bias ? static_cast<acc_t>(bias[co]) : acc_t(0);
    int64_t sy = 1, sx = 1;
    const int64_t ky0 = deconv_first_tap(oh + q.off[0], q.s[0], q.p[0], q.d[0], sy);
    const int64_t kx0 = deconv_first_tap(ow + q.off[1], q.s[1], q.p[1], q.d[1], sx);
    for (int64_t ky = ky0; ky0 >= 0 && ky < q.KH; ky += sy) {
      const int64_t iy = deconv_source(oh + q.off[0], ky, q.s[0], q.p[0], q.d[0], q.IH);
      if (iy < 0) continue;
      for (int64_t kx = kx0; kx0 >= 0 && kx < q.KW; kx += sx) {
        const int64_t ix = deconv_source(ow + q.off[1], kx, q.s[1], q.p[1], q.d[1], q.IW);
        if (ix < 0) continue;
        const scalar_t* xp = x + n * q.as[0] + iy * q.as[2] + ix * q.as[3];
        for (int64_t ci = c0; ci < c1; ++ci) {
          acc += static_cast<acc_t>(xp[ci * q.as[1]]) *
                 static_cast<acc_t>(w[((ci * q.cout_g + j) * q.KH + ky) * q.KW + kx]);
        }
      }
    }
    y[idx] = static_cast<scalar_t>(acc);
  }
}

// gx[n, ci, iy, ix] = sum_{co, ky, kx} grad[n, co, oh, ow] * w[ci, j, ky, kx] over the
// taps that land inside the crop.
template <typename scalar_t, typename index_t>
__global__ void backward_input_kernel(const scalar_t* __restrict__ grad,
                                      const scalar_t* __restrict__ w,
                                      scalar_t* __restrict__ gx, index_t total, Geom q) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    int64_t n, ci, iy, ix;
    unravel(idx, q, q.IH, q.IW, n, ci, iy, ix);
    const int64_t g = ci / q.cin_g;
    const int64_t j0 = q.diag ? ci % q.cin_g : 0, j1 = q.diag ? j0 + 1 : q.cout_g;
    acc_t acc = acc_t(0);
    for (int64_t ky = 0; ky < q.KH; ++ky) {
      const int64_t oh = deconv_target(iy, ky, q.s[0], q.p[0], q.d[0], q.off[0], q.OH);
      if (oh < 0) continue;
      for (int64_t kx = 0; kx < q.KW; ++kx) {
        const int64_t ow = deconv_target(ix, kx, q.s[1], q.p[1], q.d[1], q.off[1], q.OW);
        if (ow < 0) continue;
        const scalar_t* gp = grad + n * q.as[0] + oh * q.as[2] + ow * q.as[3];
        for (int64_t j = j0; j < j1; ++j) {
          acc += static_cast<acc_t>(gp[(g * q.cout_g + j) * q.as[1]]) *
                 static_cast<acc_t>(w[((ci * q.cout_g + j) * q.KH + ky) * q.KW + kx]);
        }
      }
    }
    gx[idx] = static_cast<scalar_t>(acc);
  }
}

// gw[ci, j, ky, kx] = sum_{n, iy, ix} x[n, ci, iy, ix] * grad[n, g*Cout_g + j, oh, ow],
// summed in a fixed order by one thread.
template <typename scalar_t, typename index_t>
__global__ void backward_weight_kernel(const scalar_t* __restrict__ grad,
                                       const scalar_t* __restrict__ x,
                                       scalar_t* __restrict__ gw, index_t total, Geom q) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int64_t kx = t % q.KW; t /= q.KW;
    const int64_t ky = t % q.KH; t /= q.KH;
    const int64_t j = t % q.cout_g;
    const int64_t ci = t / q.cout_g;
    const int64_t co = (ci / q.cin_g) * q.cout_g + j;
    acc_t acc = acc_t(0);
    for (int64_t n = 0; n < q.N; ++n) {
      for (int64_t iy = 0; iy < q.IH; ++iy) {
        const int64_t oh = deconv_target(iy, ky, q.s[0], q.p[0], q.d[0], q.off[0], q.OH);
        if (oh < 0) continue;
        const scalar_t* gp = grad + n * q.as[0] + co * q.as[1] + oh * q.as[2];
        const scalar_t* xp = x + n * q.bs[0] + ci * q.bs[1] + iy * q.bs[2];
        for (int64_t ix = 0; ix < q.IW; ++ix) {
          const int64_t ow = deconv_target(ix, kx, q.s[1], q.p[1], q.d[1], q.off[1], q.OW);
          if (ow < 0) continue;
          acc += static_cast<acc_t>(xp[ix * q.bs[3]]) * static_cast<acc_t>(gp[ow * q.as[3]]);
        }
      }
    }
    gw[idx] = static_cast<scalar_t>(acc);
  }
}

Geom make_geom(int64_t N, int64_t cin_g, int64_t cout_g, int64_t IH, int64_t IW, int64_t OH,
               int64_t OW, int64_t KH, int64_t KW, at::IntArrayRef stride,
               at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef offset) {
  Geom q{};
  q.N = N; q.cin_g = cin_g; q.cout_g = cout_g;
  q.IH = IH; q.IW = IW; q.OH = OH; q.OW = OW; q.KH = KH; q.KW = KW;
  for (int a = 0; a < 2; ++a) {
    q.s[a] = stride[a]; q.p[a] = padding[a]; q.d[a] = dilation[a]; q.off[a] = offset[a];
  }
  return q;
}

void set_strides(int64_t* dst, const at::Tensor& t) {
  for (int a = 0; a < 4; ++a) dst[a] = t.stride(a);
}

template <typename F>
void with_index_type(int64_t total, F&& f) {
  if (fits_int32({total})) f(int32_t(0)); else f(int64_t(0));
}

at::Tensor conv_transpose2d_crop_cuda(const at::Tensor& self, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias_opt,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef output_padding, int64_t groups,
                                      at::IntArrayRef dilation, at::IntArrayRef offset,
                                      at::IntArrayRef size) {
  check_deconv_forward(self, weight, bias_opt, stride, padding, output_padding, groups,
                       dilation, offset, size);
  c10::cuda::CUDAGuard guard(self.device());
  const int64_t cout_g = weight.size(1), Cout = cout_g * groups;
  at::Tensor bias;
  if (bias_opt.has_value() && bias_opt->defined()) bias = bias_opt->contiguous();
  const auto fmt = layout_of(self);
  const at::Tensor x = self.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  at::Tensor y = at::empty({x.size(0), Cout, size[0], size[1]}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  Geom q = make_geom(x.size(0), x.size(1) / groups, cout_g, x.size(2), x.size(3), size[0],
                     size[1], w.size(2), w.size(3), stride, padding, dilation, offset);
  q.C = Cout;
  q.cl = fmt == at::MemoryFormat::ChannelsLast;
  q.diag = deconv_is_channel_diagonal(w, groups);
  set_strides(q.as, x);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "deconv_fwd_cuda", [&] {
    with_index_type(y.numel(), [&](auto zero) {
      using index_t = decltype(zero);
      forward_kernel<scalar_t, index_t><<<grid_for(y.numel()), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
          y.mutable_data_ptr<scalar_t>(), static_cast<index_t>(y.numel()), q);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

at::Tensor conv_transpose2d_crop_backward_input_cuda(
    const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, at::IntArrayRef offset) {
  check_deconv_backward_input(grad_output, weight, input_size, stride, padding, groups,
                              dilation, offset);
  const int64_t cout_g = weight.size(1);
  c10::cuda::CUDAGuard guard(grad_output.device());
  const auto fmt = layout_of(grad_output);
  const at::Tensor g = grad_output.contiguous(fmt);
  const at::Tensor w = weight.contiguous();
  at::Tensor gx = at::empty(input_size, g.options().memory_format(fmt));
  if (gx.numel() == 0) return gx;
  Geom q = make_geom(input_size[0], input_size[1] / groups, cout_g, input_size[2],
                     input_size[3], g.size(2), g.size(3), w.size(2), w.size(3), stride,
                     padding, dilation, offset);
  q.C = input_size[1];
  q.cl = fmt == at::MemoryFormat::ChannelsLast;
  q.diag = deconv_is_channel_diagonal(w, groups);
  set_strides(q.as, g);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "deconv_bwd_input_cuda", [&] {
    with_index_type(gx.numel(), [&](auto zero) {
      using index_t = decltype(zero);
      backward_input_kernel<scalar_t, index_t><<<grid_for(gx.numel()), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          gx.mutable_data_ptr<scalar_t>(), static_cast<index_t>(gx.numel()), q);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gx;
}

at::Tensor conv_transpose2d_crop_backward_weight_cuda(
    const at::Tensor& grad_output, const at::Tensor& self, at::IntArrayRef weight_size,
    at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
    at::IntArrayRef dilation, at::IntArrayRef offset) {
  check_deconv_backward_weight(grad_output, self, weight_size, stride, padding, groups,
                               dilation, offset);
  const int64_t cout_g = weight_size[1];
  c10::cuda::CUDAGuard guard(self.device());
  at::Tensor gw = at::empty(weight_size, self.options());
  if (self.size(0) == 0 || grad_output.numel() == 0) return gw.zero_();
  const at::Tensor g = grad_output.contiguous(layout_of(grad_output));
  const at::Tensor x = self.contiguous(layout_of(self));
  Geom q = make_geom(x.size(0), x.size(1) / groups, cout_g, x.size(2), x.size(3), g.size(2),
                     g.size(3), weight_size[2], weight_size[3], stride, padding, dilation,
                     offset);
  set_strides(q.as, g);
  set_strides(q.bs, x);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "deconv_bwd_weight_cuda", [&] {
    with_index_type(gw.numel(), [&](auto zero) {
      using index_t = decltype(zero);
      backward_weight_kernel<scalar_t, index_t><<<grid_for(gw.numel()), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
          gw.mutable_data_ptr<scalar_t>(), static_cast<index_t>(gw.numel()), q);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_cuda);
  m.impl("conv_transpose2d_crop_backward_input", &conv_transpose2d_crop_backward_input_cuda);
  m.impl("conv_transpose2d_crop_backward_weight", &conv_transpose2d_crop_backward_weight_cuda);
}

}  // namespace fcn_kernels
