// Max-unpooling on CPU: forward (scatter by indices) and backward (gather by indices).
//
// Tensors are seen as (P, H, W, V) (common/tensor.h): P = N*C planes with V = 1 for NCHW, P = N
// images of V = C channels for channels_last. Results are those of unpool/args.h: the
// last input (row-major) wins when two inputs name the same output.
//
// Forward has two paths; neither makes a separate zero-fill pass over the whole output
// (as ATen does) before scattering:
// * rows: when pooling windows do not overlap vertically (stride_h >= kernel_h, e.g.
//   FCN/SegNet's 2x2/2), window row h owns a block of output rows. A task zeroes that
//   block (a few KiB to tens of KiB, so it stays in cache) and scatters input row h
//   into it, checking that every index lands inside the block: each output cache line
//   goes to memory once. Exact for any such indices; if one does not (not max-pool
//   indices, or out of range), the general path redoes everything.
// * general: any indices. A task zeroes one plane (or a block of channels of one
//   channels_last image) and scatters all its inputs in order, checking the range.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/grad_layout.h"
#include "common/parallel.h"
#include "unpool/args.h"

namespace fcn_kernels {
namespace {

// True when every ind[k], k < count, lies in [lo, lo + len). Branch-free (the top bit of
// (i - lo) | (lo + len - 1 - i), in wrapping unsigned arithmetic, is set exactly when i is
// outside), so it vectorises; the forward paths check a row (or plane) this way before
// zeroing and scattering it.
inline bool all_in_range(const int64_t* __restrict__ ind, int64_t count, int64_t lo, int64_t len) {
  const uint64_t first = static_cast<uint64_t>(lo), last = first + len - 1;
  uint64_t acc = 0;
  for (int64_t k = 0; k < count; ++k) {
    const uint64_t i = static_cast<uint64_t>(ind[k]);
    acc |= (i - first) | (last - i);
  }
  return (acc >> 63) == 0;
}

// y[i * V + c] = x[w * V + c] for i = ind[w * V + c], w < n, c < cn, in order (the
// indices already checked).
template <typename T, typename Cn, typename Vs>
void scatter(const T* __restrict__ x, const int64_t* __restrict__ ind, T* __restrict__ y, int64_t n,
             Cn cn, Vs V) {
  for (int64_t w = 0; w < n; ++w) {
    for (int64_t c = 0; c < cn; ++c) y[ind[w * V + c] * V + c] = x[w * V + c];
  }
}

// Row-block fast path (stride_h >= kernel_h). False, with the output partly written,
// as soon as an index falls outside its window row's block.
template <typename T>
bool forward_rows(const T* x, const int64_t* ind, T* y, const UnpoolProblem& u, int64_t sh,
                  int64_t ph) {
  std::atomic<bool> ok{true};
  const int64_t IH = u.IH, IW = u.IW, OH = u.OH, OW = u.OW;
  with_vec(u.V, [&](auto V) {
    at::parallel_for(0, u.P * IH, grain(OW * V * sh), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end && ok.load(std::memory_order_relaxed); ++r) {
        const int64_t h = r % IH;
        const int64_t b0 = unpool_block_begin(h, IH, OH, sh, ph);
        const int64_t b1 = unpool_block_begin(h + 1, IH, OH, sh, ph);
        if (!all_in_range(ind + r * IW * V, IW * V, b0 * OW, (b1 - b0) * OW)) {
          ok.store(false, std::memory_order_relaxed);
          break;
        }
        T* yp = y + (r / IH) * OH * OW * V;
        std::memset(yp + b0 * OW * V, 0, (b1 - b0) * OW * V * sizeof(T));
        scatter(x + r * IW * V, ind + r * IW * V, yp, IW, V, V);
      }
    });
  });
  return ok.load();
}

// General path: any indices. A task zeroes a plane (NCHW) or an image (channels_last)
// and scatters its inputs in order. Channels_last images are split into channel blocks
// only when there are fewer images than threads. False if an index is out of range.
template <typename T>
bool forward_general(const T* x, const int64_t* ind, T* y, const UnpoolProblem& u) {
  std::atomic<bool> ok{true};
  const int64_t in_plane = u.IH * u.IW, out_plane = u.OH * u.OW, V = u.V;
  const int64_t nb = std::clamp<int64_t>(at::get_num_threads() / u.P, 1, (V + 15) / 16);
  const int64_t CB = (V + nb - 1) / nb;
  at::parallel_for(0, u.P * nb, grain(out_plane * CB), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end && ok.load(std::memory_order_relaxed); ++t) {
      const int64_t p = t / nb, c0 = (t % nb) * CB, c1 = std::min(c0 + CB, V);
      T* yp = y + p * out_plane * V;
      const T* xp = x + p * in_plane * V;
      const int64_t* ip = ind + p * in_plane * V;
      if (!all_in_range(ip, in_plane * V, 0, out_plane)) {  // (all channels: simpler)
        ok.store(false, std::memory_order_relaxed);
        break;
      }
      if (c1 - c0 == V) {
        std::memset(yp, 0, out_plane * V * sizeof(T));
        with_vec(V, [&](auto Vc) { scatter(xp, ip, yp, in_plane, Vc, Vc); });
      } else {
        for (int64_t o = 0; o < out_plane; ++o) {
          std::fill(yp + o * V + c0, yp + o * V + c1, T(0));
        }
        scatter(xp + c0, ip + c0, yp + c0, in_plane, c1 - c0, V);
      }
    }
  });
  return ok.load();
}

// Backward. ATen's (torch 2.14) is grad_output.flatten(-2).gather(-1, indices.flatten(-2)):
// a scalar loop with a bounds check per element, in parallel over the N*C planes, bound
// by memory (grad_output is read whole: every cache line holds some window's maximum).
// Ours is the same loop and, for large NCHW problems (grad_input >= 1 MiB), also:
// * streaming (non-temporal) stores for grad_input: its lines are not read from memory
//   first (as on an ordinary store miss), evict nothing and hold none of the miss
//   buffers the loads need;
// * when grad_output rows are >= 256 bytes, a software prefetch of grad_output running
//   8 KiB ahead. A window's rows are then far apart and its loads alternate between
//   them, which hardware prefetchers can follow poorly (benches/RESULTS.md); with shorter
//   rows they do, and the software prefetches only cost time.
// Streaming stores: x86-64 (movnti, SSE2), 4- and 8-byte elements. A task ends with a
// store fence (stream_fence) so that its values are visible to other threads.
template <typename T>
inline void store(T* p, T v, std::false_type /*stream*/) {
  *p = v;
}
#if defined(__x86_64__)
inline void store(uint32_t* p, uint32_t v, std::true_type) {
  _mm_stream_si32(reinterpret_cast<int*>(p), static_cast<int>(v));
}
inline void store(uint64_t* p, uint64_t v, std::true_type) {
  _mm_stream_si64(reinterpret_cast<long long*>(p), static_cast<long long>(v));
}
inline void stream_fence() {
  _mm_sfence();
}
constexpr bool kCanStream = true;
#else
template <typename T>
inline void store(T* p, T v, std::true_type) {
  *p = v;
}
inline void stream_fence() {}
constexpr bool kCanStream = false;
#endif

// Below kStreamBytes, ordinary stores leave grad_input in cache for the next op and
// there is little to gain.
constexpr int64_t kStreamBytes = int64_t(1) << 20;
constexpr int64_t kPrefetchRowBytes = 256;

// Prefetches the bytes of a task's grad_output in order, up to kAhead bytes past the
// element being read (the gather reads grad_output roughly in order: pooling windows
// are). Each line is prefetched once; indices that jump around only waste prefetches.
struct Prefetcher {
  static constexpr int64_t kAhead = 8192;
  const char* next;               // first byte not prefetched yet
  const char* end;                // end of the task's grad_output
  void ahead_of(const char* p) {  // p <= end
    const char* want = p + std::min<std::ptrdiff_t>(kAhead, end - p);
    for (next = std::max(next, p); next < want; next += 64) __builtin_prefetch(next);
  }
};

// out[j * V + c] = g[ind[j * V + c] * V + c] for j < n, c < V. False (at once) if an
// index is outside [0, plane). All stores of a task go through `store` with the same
// Stream (mixing ordinary and streaming stores to one cache line is slow). NCHW
// prefetches through `pf` (unless null) every kBlock elements.
template <typename T, typename Vec, typename Stream>
bool gather(const T* __restrict__ g, const int64_t* __restrict__ ind, T* __restrict__ out,
            int64_t n, int64_t plane, Vec V, Stream st, Prefetcher* pf) {
  int64_t j = 0;
  if constexpr (!std::is_same_v<Vec, int64_t>) {  // NCHW: 4 at a time, one check
    constexpr int64_t kBlock = 256;
    const uint64_t lim = static_cast<uint64_t>(plane);
    while (j + 4 <= n) {
      if (pf) pf->ahead_of(reinterpret_cast<const char*>(g + std::min<uint64_t>(ind[j], lim)));
      const int64_t stop = j + std::min(kBlock, (n - j) & ~int64_t(3));
      for (; j < stop; j += 4) {
        const uint64_t i0 = ind[j], i1 = ind[j + 1], i2 = ind[j + 2], i3 = ind[j + 3];
        if ((i0 >= lim) | (i1 >= lim) | (i2 >= lim) | (i3 >= lim)) return false;
        const T a = g[i0], b = g[i1], c = g[i2], d = g[i3];
        store(out + j, a, st);
        store(out + j + 1, b, st);
        store(out + j + 2, c, st);
        store(out + j + 3, d, st);
      }
    }
  }
  for (; j < n; ++j) {
    for (int64_t c = 0; c < V; ++c) {
      const uint64_t i = static_cast<uint64_t>(ind[j * V + c]);
      if (i >= static_cast<uint64_t>(plane)) return false;
      store(out + j * V + c, g[i * V + c], st);
    }
  }
  return true;
}

// Where plane p of grad_output starts: p = n * C + c planes (NCHW, C channels) or
// p = n images (channels_last, C = 1), at any batch / channel strides (a gradient sliced
// from a larger one, or expanded over the batch, is read in place).
struct PlaneOffsets {
  int64_t C, sn, sc;
  int64_t operator()(int64_t p) const { return (p / C) * sn + (p % C) * sc; }
};

// grad_input[p, j, c] = grad_output[p, indices[p, j, c], c], a task's rows gathered one
// plane at a time. False if an index is out of range. The prefetcher assumes dense
// planes in order (callers pass prefetch only then).
template <typename T, typename Vec, typename Stream>
bool backward_gather(const T* g, const int64_t* ind, T* gx, const UnpoolProblem& u, Vec V,
                     Stream st, bool prefetch, const PlaneOffsets& offs) {
  std::atomic<bool> ok{true};
  const int64_t IH = u.IH, IW = u.IW, plane = u.OH * u.OW;
  at::parallel_for(0, u.P * IH, grain(IW * V), [&](int64_t begin, int64_t end) {
    Prefetcher pf{reinterpret_cast<const char*>(g + begin / IH * plane * V),
                  reinterpret_cast<const char*>(g + ((end - 1) / IH + 1) * plane * V)};
    for (int64_t r = begin; r < end;) {
      const int64_t p = r / IH, stop = std::min(end, (p + 1) * IH);
      if (!gather(g + offs(p), ind + r * IW * V, gx + r * IW * V, (stop - r) * IW, plane, V, st,
                  prefetch ? &pf : nullptr)) {
        ok.store(false, std::memory_order_relaxed);
        break;
      }
      r = stop;
    }
    if constexpr (Stream::value) stream_fence();
  });
  return ok.load();
}

// Backward of a gradient constant over each plane (e.g. from loss = y.sum()): every
// input gets its plane's value; the indices are still range-checked, as the gather does.
// V == 1: one value per row of planes; V == C (channels_last indices): per channel.
template <typename T>
bool backward_plane_constant(const T* vals, int64_t vs0, int64_t vs1, const int64_t* ind, T* gx,
                             const UnpoolProblem& u, int64_t C) {
  std::atomic<bool> ok{true};
  const int64_t IH = u.IH, IW = u.IW, V = u.V, plane = u.OH * u.OW;
  at::parallel_for(0, u.P * IH, grain(IW * V), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / IH, n = V == 1 ? p / C : p;
      if (!all_in_range(ind + r * IW * V, IW * V, 0, plane)) {
        ok.store(false, std::memory_order_relaxed);
        break;
      }
      T* o = gx + r * IW * V;
      if (V == 1) {
        std::fill(o, o + IW, vals[n * vs0 + (p % C) * vs1]);
      } else {
        for (int64_t w = 0; w < IW; ++w) {
          for (int64_t c = 0; c < V; ++c) o[w * V + c] = vals[n * vs0 + c * vs1];
        }
      }
    }
  });
  return ok.load();
}

at::Tensor max_unpool2d_cpu(const at::Tensor& self, const at::Tensor& indices,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef output_size) {
  UnpoolProblem u =
      unpool_forward_problem(self, indices, kernel_size, stride, padding, output_size);
  if (u.out.numel() == 0) return u.out;
  bool ok = true;
  dispatch_by_element_size(u.out, [&](auto zero) {
    using T = decltype(zero);
    const T* x = static_cast<const T*>(u.src.const_data_ptr());
    const int64_t* ind = u.indices.const_data_ptr<int64_t>();
    T* y = static_cast<T*>(u.out.mutable_data_ptr());
    ok = (stride[0] >= kernel_size[0] && forward_rows(x, ind, y, u, stride[0], padding[0])) ||
         forward_general(x, ind, y, u);
  });
  if (!ok) raise_bad_index(indices, u.OH, u.OW);
  return u.out;
}

// grad_output is read in place when each plane (NCHW) or image (channels_last) is dense,
// whatever the batch / channel strides; a plane-constant gradient is not read whole;
// other layouts (a transposed or spatially sliced gradient) are copied first, as ATen's
// gather (grad_output.flatten(-2)) copies them too.
at::Tensor max_unpool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, bool /*check_indices: always*/) {
  check_unpool_values(grad_output, "grad_output");
  check_unpool_indices(indices, grad_output, "grad_output", /*same_shape=*/false);
  const int64_t C = grad_output.size(1), OH = grad_output.size(2), OW = grad_output.size(3);
  check_unpool_geometry(kernel_size, stride, padding, indices.size(2), indices.size(3), OH, OW);
  const auto& g_ = grad_output;
  const bool constant = is_plane_constant(g_);
  const bool planes_dense = (OW == 1 || g_.stride(3) == 1) && (OH == 1 || g_.stride(2) == OW);
  const bool images_dense = (C == 1 || g_.stride(1) == 1) && (OW == 1 || g_.stride(3) == C) &&
                            (OH == 1 || g_.stride(2) == OW * C);
  const auto kCL = at::MemoryFormat::ChannelsLast, kNCHW = at::MemoryFormat::Contiguous;
  at::MemoryFormat fmt;
  UnpoolProblem u;
  if (constant) {
    fmt = layout_of(indices);
    u.src = g_;
  } else if (images_dense && (layout_of(g_) == kCL || !planes_dense)) {
    fmt = kCL;
    u.src = g_;
  } else if (planes_dense) {
    fmt = kNCHW;
    u.src = g_;
  } else {
    fmt = layout_of(g_);
    u.src = g_.contiguous(fmt);
  }
  u.indices = indices.contiguous(fmt);
  u.out = at::empty(indices.sizes(), g_.options().memory_format(fmt));
  std::tie(u.P, u.V) = planes_and_vec(u.out, fmt);
  u.IH = indices.size(2);
  u.IW = indices.size(3);
  u.OH = OH;
  u.OW = OW;
  if (u.out.numel() == 0) return u.out;
  bool ok = true;
  dispatch_by_element_size(u.out, [&](auto zero) {
    using T = decltype(zero);
    const int64_t* ind = u.indices.const_data_ptr<int64_t>();
    T* gx = static_cast<T*>(u.out.mutable_data_ptr());
    if (constant) {
      const at::Tensor v = plane_values(grad_output);
      ok = backward_plane_constant(static_cast<const T*>(v.const_data_ptr()), v.stride(0),
                                   v.stride(1), ind, gx, u, C);
      return;
    }
    const at::Tensor& src = u.src;
    const T* g = static_cast<const T*>(src.const_data_ptr());
    const PlaneOffsets offs = u.V == 1 ? PlaneOffsets{C, src.stride(0), src.stride(1)}
                                       : PlaneOffsets{1, src.stride(0), 0};
    const bool dense = src.is_contiguous(fmt);
    // Large NCHW problems: streaming stores, and prefetching for long rows (see above;
    // channels_last is already far ahead of ATen).
    if constexpr (kCanStream && sizeof(T) >= 4) {
      if (u.V == 1 && u.out.nbytes() >= kStreamBytes) {
        ok = backward_gather(g, ind, gx, u, kPlanarVec, std::true_type{},
                             dense && u.OW * int64_t(sizeof(T)) >= kPrefetchRowBytes, offs);
        return;
      }
    }
    with_vec(u.V, [&](auto V) {
      ok = backward_gather(g, ind, gx, u, V, std::false_type{}, /*prefetch=*/false, offs);
    });
  });
  if (!ok) raise_bad_index(indices, u.OH, u.OW);
  return u.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fcn_kernels, CPU, m) {
  m.impl("max_unpool2d", &max_unpool2d_cpu);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cpu);
}

}  // namespace fcn_kernels
