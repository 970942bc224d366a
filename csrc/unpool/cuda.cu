// Max-unpooling on CUDA: forward (scatter by indices) and backward (gather by indices).
//
// Same (P, H, W, V) view as the CPU kernels (P = N*C, V = 1 for NCHW; P = N, V = C for
// channels_last), kernels instantiated per element size (unpool/args.h), and the same
// results: the last input (row-major) wins when two inputs name the same output.
//
// Forward:
// * fast path, when pooling windows neither overlap nor fall outside the output (e.g.
//   FCN/SegNet's 2x2/2): one thread per output element reads the index of the window
//   the element belongs to and writes the value or zero, so every output is written
//   exactly once with no zero-fill pass. The exactness condition (every index lies in
//   its own window) is checked on the way by one thread per window; if it fails the
//   general path redoes the output.
// * general path, any indices: winner[o] = the largest input position naming o
//   (atomicMax, order-independent so deterministic), then one thread per output
//   gathers its winner's value or writes zero.
// Bad indices never cause out-of-bounds accesses; kernels raise a flag, which the host
// reads (one sync per call) to raise a Python IndexError instead of a device assert.
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "unpool/args.h"
#include "gpu/launch.cuh"

namespace fcn_kernels {
namespace {

// Flags one kernel raises (plain stores of 1: racing writers agree).
struct Flag {
  at::Tensor t;
  explicit Flag(const at::Tensor& like) : t(at::zeros({1}, like.options().dtype(at::kInt))) {}
  int* ptr() { return t.mutable_data_ptr<int>(); }
  bool raised() const { return t.item<int>() != 0; }  // host sync
};

template <typename index_t>
struct Geometry {
  index_t V, IH, IW, OH, OW;
  int kh, kw, sh, sw, ph, pw;
};

template <typename T, typename index_t>
__global__ void unpool_fast_kernel(const T* __restrict__ x, const int64_t* __restrict__ ind,
                                   T* __restrict__ y, index_t total, Geometry<index_t> g,
                                   int* __restrict__ not_local) {
  for (index_t o = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; o < total;
       o += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = o % g.V;
    index_t t = o / g.V;
    const index_t ow = t % g.OW;
    t /= g.OW;
    const index_t oh = t % g.OH;
    const index_t p = t / g.OH;
    // Window (wh, ww) and the offset (dh, dw) of this output inside it.
    const index_t wh = (oh + g.ph) / g.sh, dh = oh + g.ph - wh * g.sh;
    const index_t ww = (ow + g.pw) / g.sw, dw = ow + g.pw - ww * g.sw;
    T v = T(0);
    if (dh < g.kh && dw < g.kw && wh < g.IH && ww < g.IW) {
      const index_t in = ((p * g.IH + wh) * g.IW + ww) * g.V + c;
      const int64_t i = ind[in];
      if (i == static_cast<int64_t>(oh) * g.OW + ow) v = x[in];
      // The window's first in-range output checks that the index lies in the window.
      const index_t r0 = wh * g.sh - g.ph, c0 = ww * g.sw - g.pw;
      if (oh == (r0 > 0 ? r0 : 0) && ow == (c0 > 0 ? c0 : 0)) {
        bool local = i >= 0 && i < static_cast<int64_t>(g.OH) * g.OW;
        if (local) {
          const index_t r = static_cast<index_t>(i) / g.OW, col = static_cast<index_t>(i) % g.OW;
          local = r >= oh && r < r0 + g.kh && col >= ow && col < c0 + g.kw;
        }
        if (!local) *not_local = 1;
      }
    }
    y[o] = v;
  }
}

// winner[p, i, c] = max over inputs (p, j, c) with indices == i of j.
template <typename index_t>
__global__ void unpool_winner_kernel(const int64_t* __restrict__ ind,
                                     index_t* __restrict__ winner, index_t total,
                                     index_t in_plane, index_t out_plane, index_t V,
                                     int* __restrict__ bad) {
  for (index_t k = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = k % V, t = k / V;
    const index_t j = t % in_plane, p = t / in_plane;
    const int64_t i = ind[k];
    if (i < 0 || i >= out_plane) {
      *bad = 1;
      continue;
    }
    index_t* w = winner + (p * out_plane + static_cast<index_t>(i)) * V + c;
    if constexpr (sizeof(index_t) == 4) {
      atomicMax(reinterpret_cast<int*>(w), static_cast<int>(j));
    } else {
      atomicMax(reinterpret_cast<long long*>(w), static_cast<long long>(j));
    }
  }
}

template <typename T, typename index_t>
__global__ void unpool_gather_winner_kernel(const T* __restrict__ x,
                                            const index_t* __restrict__ winner,
                                            T* __restrict__ y, index_t total,
                                            index_t in_plane, index_t out_plane, index_t V) {
  for (index_t o = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; o < total;
       o += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t j = winner[o];
    const index_t c = o % V, p = o / V / out_plane;
    y[o] = j >= 0 ? x[(p * in_plane + j) * V + c] : T(0);
  }
}

// grad_input[p, j, c] = grad_output[p, indices[p, j, c], c] (0 where out of range,
// flagged in *bad unless bad is null).
template <typename T, typename index_t>
__global__ void unpool_backward_kernel(const T* __restrict__ g, const int64_t* __restrict__ ind,
                                       T* __restrict__ gx, index_t total, index_t in_plane,
                                       index_t out_plane, index_t V, int* __restrict__ bad) {
  for (index_t k = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = k % V, p = k / V / in_plane;
    const int64_t i = ind[k];
    if (i < 0 || i >= out_plane) {
      if (bad != nullptr) *bad = 1;
      gx[k] = T(0);
    } else {
      gx[k] = g[(p * out_plane + static_cast<index_t>(i)) * V + c];
    }
  }
}

// Pooling windows disjoint and each with at least one output in range: the condition
// under which the fast kernel's per-window check covers every input.
bool fast_path_applies(const UnpoolProblem& u, at::IntArrayRef k, at::IntArrayRef s,
                       at::IntArrayRef pad) {
  return s[0] >= k[0] && s[1] >= k[1] && pad[0] < k[0] && pad[1] < k[1] &&
         (u.IH - 1) * s[0] - pad[0] < u.OH && (u.IW - 1) * s[1] - pad[1] < u.OW;
}

template <typename T, typename index_t>
void forward_general(const UnpoolProblem& u, cudaStream_t stream, int* bad) {
  constexpr auto index_type = sizeof(index_t) == 4 ? at::kInt : at::kLong;
  const at::Tensor winner = at::full({u.out.numel()}, -1, u.out.options().dtype(index_type));
  const index_t in_plane = u.IH * u.IW, out_plane = u.OH * u.OW;
  unpool_winner_kernel<index_t><<<grid_for(u.indices.numel()), kThreads, 0, stream>>>(
      u.indices.const_data_ptr<int64_t>(), winner.mutable_data_ptr<index_t>(),
      u.indices.numel(), in_plane, out_plane, u.V, bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  unpool_gather_winner_kernel<T, index_t><<<grid_for(u.out.numel()), kThreads, 0, stream>>>(
      static_cast<const T*>(u.src.const_data_ptr()), winner.const_data_ptr<index_t>(),
      static_cast<T*>(u.out.mutable_data_ptr()), u.out.numel(), in_plane, out_plane, u.V);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor max_unpool2d_cuda(const at::Tensor& self, const at::Tensor& indices,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef output_size) {
  c10::cuda::CUDAGuard guard(self.device());
  UnpoolProblem u =
      unpool_forward_problem(self, indices, kernel_size, stride, padding, output_size);
  if (u.out.numel() == 0) return u.out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  Flag bad(u.out);
  bool ok = true;
  dispatch_by_element_size(u.out, [&](auto zero) {
    using T = decltype(zero);
    auto run = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      if (fast_path_applies(u, kernel_size, stride, padding)) {
        const Geometry<index_t> g{
            static_cast<index_t>(u.V), static_cast<index_t>(u.IH), static_cast<index_t>(u.IW),
            static_cast<index_t>(u.OH), static_cast<index_t>(u.OW),
            static_cast<int>(kernel_size[0]), static_cast<int>(kernel_size[1]),
            static_cast<int>(stride[0]), static_cast<int>(stride[1]),
            static_cast<int>(padding[0]), static_cast<int>(padding[1])};
        unpool_fast_kernel<T, index_t><<<grid_for(u.out.numel()), kThreads, 0, stream>>>(
            static_cast<const T*>(u.src.const_data_ptr()), u.indices.const_data_ptr<int64_t>(),
            static_cast<T*>(u.out.mutable_data_ptr()), u.out.numel(), g, bad.ptr());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (!bad.raised()) return;
        bad.t.zero_();
      }
      forward_general<T, index_t>(u, stream, bad.ptr());
      ok = !bad.raised();
    };
    if (fits_int32({u.src.numel(), u.out.numel()})) run(int32_t{}); else run(int64_t{});
  });
  if (!ok) raise_bad_index(indices, u.OH, u.OW);
  return u.out;
}

at::Tensor max_unpool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, bool check_indices) {
  c10::cuda::CUDAGuard guard(grad_output.device());
  UnpoolProblem u = unpool_backward_problem(grad_output, indices, kernel_size, stride, padding);
  if (u.out.numel() == 0) return u.out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::optional<Flag> bad;  // no flag, no host sync, when the forward checked already
  if (check_indices) bad.emplace(u.out);
  dispatch_by_element_size(u.out, [&](auto zero) {
    using T = decltype(zero);
    auto run = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      unpool_backward_kernel<T, index_t><<<grid_for(u.out.numel()), kThreads, 0, stream>>>(
          static_cast<const T*>(u.src.const_data_ptr()), u.indices.const_data_ptr<int64_t>(),
          static_cast<T*>(u.out.mutable_data_ptr()), u.out.numel(), u.IH * u.IW, u.OH * u.OW,
          u.V, bad ? bad->ptr() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (fits_int32({u.src.numel(), u.out.numel()})) run(int32_t{}); else run(int64_t{});
  });
  if (bad && bad->raised()) raise_bad_index(indices, u.OH, u.OW);
  return u.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  m.impl("max_unpool2d", &max_unpool2d_cuda);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cuda);
}

}  // namespace fcn_kernels
