// Max-unpooling on the GPU: kernel bodies and host side, generic in the launcher L
// (gpu/launch.h). Instantiated for CUDA in unpool/cuda.cu and for the CPU emulation
// in unpool/emu.cpp, so this logic exists once.
//
// Same (P, H, W, V) view as the CPU kernels (P = N*C planes of V = 1 for NCHW; P = N
// images of V = C channels for channels_last), kernels instantiated per element size
// (unpool/args.h), and the same results: the last input (row-major) wins when two
// inputs name the same output.
//
// Every kernel runs threads along a row of a plane (block.x, whole warps: coalesced in
// both layouts, a row being W*V contiguous elements), rows over grid.y (and block.y
// when rows are short), planes over grid.z; rows and planes loop when the grid is
// capped (a few waves of blocks). Divisions (by V, by the stride) happen once per
// thread or per row; the per-element index math is multiply-adds, in int32 whenever
// every offset fits (fits_int32), int64 otherwise. No floating-point arithmetic:
// elements are moved as bits.
//
// Forward:
// * fast path, when pooling windows neither overlap nor lie wholly outside the output
//   (e.g. FCN/SegNet's 2x2/2): one thread per output reads the index of the window it
//   lies in and writes the value or zero, so every output is written exactly once and
//   there is no zero-fill pass. The window's first in-range output checks that the
//   index lies in the window; if one does not, it raises a device flag.
// * general path: winner[o] = the largest input position naming o (atomic max: the
//   order of the atomics does not matter, so the result is deterministic), then one
//   thread per output gathers its winner's value or writes zero. After the fast path
//   these kernels run gated on the device flag: they exit at once unless it was
//   raised, so the fallback costs no host sync (and works under CUDA-graph capture).
//   They use a grid of a few blocks per SM (grid-stride loops), so an exit is cheap.
// FCN_KERNELS_UNPOOL=ondemand (for the GPU run to decide; default "gated", the above):
// after the fast path the host reads both flags at once (the copy that is the eager
// forward's one sync anyway) and launches the general path, ungated, only when the fast
// path raised its flag: 2 launches (flags fill, fast) + 1 D2H copy instead of 5 + 1, a
// second sync only in the rare fallback. While a CUDA graph is captured it is "gated".
// Backward: a gather, grad_output read through its strides (no copy of an expanded
// gradient). Host syncs: one per forward and per checked backward (eager mode), reading the flag
// of out-of-range indices to raise an IndexError (raise_bad_index). While a CUDA graph
// is being captured (L::capturing()) there is none: out-of-range indices are still
// bounds-checked in the kernels and never read or write out of bounds; the forward
// ignores them, the backward reads them as 0. check_indices=False backward: no sync.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "gpu/env.h"
#include "gpu/launch.h"
#include "unpool/args.h"

namespace fcn_kernels {
namespace {  // each instantiating file (cuda.cu, emu.cpp) gets its own copy

constexpr int64_t kUnpoolThreads = 256;

// Launch shape for threads along rows of `row_len` elements, `rows` rows per plane,
// `planes` planes; at most `max_blocks` blocks when max_blocks > 0 (then rows and
// planes loop inside the kernel).
struct RowsLaunch {
  Extent grid, block;
};
inline RowsLaunch rows_launch(int64_t row_len, int64_t rows, int64_t planes,
                              int64_t max_blocks = 0) {
  const int64_t bx = std::min<int64_t>(kUnpoolThreads, (row_len + 31) / 32 * 32);
  const int64_t by = std::max<int64_t>(1, std::min<int64_t>(kUnpoolThreads / bx, rows));
  const int64_t gx = (row_len + bx - 1) / bx;
  int64_t gy = std::min<int64_t>((rows + by - 1) / by, kMaxGridYZ);
  int64_t gz = std::min<int64_t>(planes, kMaxGridYZ);
  if (max_blocks > 0) {
    gy = std::clamp<int64_t>(max_blocks / gx, 1, gy);
    gz = std::clamp<int64_t>(max_blocks / (gx * gy), 1, gz);
  }
  RowsLaunch l;
  l.grid = {gx, gy, gz};
  l.block = {bx, by, 1};
  return l;
}

// Grids of a few waves (8 blocks of 256 threads fill an SM): a thread then handles
// several rows or planes, so its one-off divisions are spread over their elements.
template <typename L>
int64_t unpool_max_blocks() {
  return int64_t(L::sm_count()) * 32;
}

// The kernels' loops: element e of the row (fixed per thread), rows r, planes p.
#define FK_UNPOOL_ROW_ELEMENT(I, e, row_len)                                                  \
  const I e =                                                                                 \
      static_cast<I>(t.block.x) * static_cast<I>(t.block_dim.x) + static_cast<I>(t.thread.x); \
  if (e >= (row_len)) return
#define FK_UNPOOL_FOR_PLANES(I, p, planes) \
  for (I p = static_cast<I>(t.block.z); p < (planes); p += static_cast<I>(t.grid.z))
#define FK_UNPOOL_FOR_ROWS(I, r, rows)                                                             \
  for (I r =                                                                                       \
           static_cast<I>(t.block.y) * static_cast<I>(t.block_dim.y) + static_cast<I>(t.thread.y); \
       r < (rows); r += static_cast<I>(t.grid.y) * static_cast<I>(t.block_dim.y))

// True when flat position `off` past the window's first in-range output (oh, ow) lies
// in the window: off = dr * OW + dc with dr < rows and dc < cols (cols <= OW - ow, so
// dc < cols means column ow + dc of row oh + dr). No division: dc is found by at most
// rows - 1 subtractions (rows <= kernel height).
template <typename I>
FK_HD bool in_window(int64_t off, I rows, I cols, I OW) {
  if (off < 0 || off >= static_cast<int64_t>(rows) * OW) return false;
  I dc = static_cast<I>(off);
  while (dc >= OW) dc -= OW;
  return dc < cols;
}

template <typename T, typename I>
struct FastForward {
  const T* x;
  const int64_t* ind;
  T* y;
  int* not_local;  // raised when an index is not in its window
  I P, V, IH, IW, OH, OW, kh, kw, sh, sw, ph, pw;

  FK_HD void operator()(const Thread& t) const {
    FK_UNPOOL_ROW_ELEMENT(I, e, OW * V);
    const I ow = V == 1 ? e : e / V, c = e - ow * V;
    // Window column ww, this output's offset dw in it; c0 its first column (may be < 0).
    const I ww = (ow + pw) / sw, dw = ow + pw - ww * sw, c0 = ww * sw - pw;
    const bool in_col = dw < kw && ww < IW;
    const bool first_col = ow == (c0 > 0 ? c0 : 0);
    const I cols = (c0 + kw < OW ? c0 + kw : OW) - ow;  // window columns from ow on
    const I in_plane = IH * IW * V, out_plane = OH * OW * V;
    // Rows outside, planes inside: the row's window arithmetic (a division by sh) is
    // done once per row and thread, the plane loop is multiply-adds only.
    FK_UNPOOL_FOR_ROWS(I, oh, OH) {
      const I wh = (oh + ph) / sh, dh = oh + ph - wh * sh, r0 = wh * sh - ph;
      const bool in_win = in_col && dh < kh && wh < IH;
      // The window's first in-range output checks that its index lies in the window.
      const bool check = in_win && first_col && oh == (r0 > 0 ? r0 : 0);
      const I rows = (r0 + kh < OH ? r0 + kh : OH) - oh;  // window rows from oh on
      const int64_t here = static_cast<int64_t>(oh) * OW + ow;
      const I k0 = in_win ? (wh * IW + ww) * V + c : I(0), o0 = oh * OW * V + e;
      FK_UNPOOL_FOR_PLANES(I, p, P) {
        T v = T(0);
        if (in_win) {
          const I k = p * in_plane + k0;
          const int64_t i = ind[k];
          if (i == here) v = x[k];
          if (check && !in_window<I>(i - here, rows, cols, OW)) raise_flag(not_local);
        }
        y[p * out_plane + o0] = v;
      }
    }
  }
};

// The general path's kernels run only when *gate != 0 (gate null: always).
FK_HD bool gate_closed(const int* gate) {
  return gate != nullptr && *gate == 0;
}

template <typename I>
struct FillWinners {
  I* winner;
  const int* gate;
  I P, rows, row_len;

  FK_HD void operator()(const Thread& t) const {
    if (gate_closed(gate)) return;
    FK_UNPOOL_ROW_ELEMENT(I, e, row_len);
    FK_UNPOOL_FOR_PLANES(I, p, P) {
      FK_UNPOOL_FOR_ROWS(I, r, rows) {
        winner[(p * rows + r) * row_len + e] = I(-1);
      }
    }
  }
};

FK_HD void atomic_max_index(int32_t* p, int32_t v) {
  atomic_max(p, v);
}
FK_HD void atomic_max_index(int64_t* p, int64_t v) {
  atomic_max(reinterpret_cast<long long*>(p), static_cast<long long>(v));
}

// winner[p, i, c] = max over inputs (p, j, c) with indices == i of j (j = h * IW + w).
template <typename I>
struct Winners {
  const int64_t* ind;
  I* winner;
  const int* gate;
  int* bad;  // raised for an index outside [0, OH * OW), which is skipped
  I P, V, IH, IW, plane;

  FK_HD void operator()(const Thread& t) const {
    if (gate_closed(gate)) return;
    FK_UNPOOL_ROW_ELEMENT(I, e, IW * V);
    const I w = V == 1 ? e : e / V, c = e - w * V;
    FK_UNPOOL_FOR_PLANES(I, p, P) {
      FK_UNPOOL_FOR_ROWS(I, h, IH) {
        const int64_t i = ind[((p * IH + h) * IW) * V + e];
        if (i < 0 || i >= plane) {
          raise_flag(bad);
          continue;
        }
        atomic_max_index(winner + (p * plane + static_cast<I>(i)) * V + c, h * IW + w);
      }
    }
  }
};

// y[o] = x[winner[o]] or 0. `winner` may be `y` itself (same element size): each
// thread reads its winner before it writes the same element, so no restrict here.
template <typename T, typename I>
struct GatherWinners {
  const T* x;
  T* y;
  const I* winner;
  const int* gate;
  I P, V, IH, IW, OH, OW;

  FK_HD void operator()(const Thread& t) const {
    if (gate_closed(gate)) return;
    FK_UNPOOL_ROW_ELEMENT(I, e, OW * V);
    const I c = V == 1 ? I(0) : e % V;
    FK_UNPOOL_FOR_PLANES(I, p, P) {
      FK_UNPOOL_FOR_ROWS(I, oh, OH) {
        const I o = ((p * OH + oh) * OW) * V + e;
        const I j = winner[o];
        y[o] = j >= 0 ? x[(p * IH * IW + j) * V + c] : T(0);
      }
    }
  }
};

// grad_input[p, h, w, c] = grad_output[n, ch, indices[p, h, w, c]] (0 when the index is
// out of range, raising *bad unless bad is null). grad_output is read through its
// strides: element (n, ch, i) at n * gN + ch * gC + i * gI, the plane being flat
// (gI = stride(3), with stride(2) == OW * stride(3), or one of them irrelevant). Plane
// p is (n, ch) = (p / C, p % C) for NCHW (Cp = C, V = 1), (p, c) for channels_last.
template <typename T, typename I>
struct GatherBackward {
  const T* g;
  const int64_t* ind;
  T* gx;
  int* bad;
  I P, V, Cp, IH, IW, plane, gN, gC, gI;

  FK_HD void operator()(const Thread& t) const {
    FK_UNPOOL_ROW_ELEMENT(I, e, IW * V);
    const I c = V == 1 ? I(0) : e % V;
    // Plane p = n * Cp + pc, stepped by grid.z without a division per plane.
    const I step = static_cast<I>(t.grid.z), dn = step / Cp, dpc = step - dn * Cp;
    I n = static_cast<I>(t.block.z) / Cp, pc = static_cast<I>(t.block.z) - n * Cp;
    FK_UNPOOL_FOR_PLANES(I, p, P) {
      const T* gp = g + n * gN + (pc + c) * gC;
      FK_UNPOOL_FOR_ROWS(I, h, IH) {
        const I k = ((p * IH + h) * IW) * V + e;
        const int64_t i = ind[k];
        if (i >= 0 && i < plane) {
          gx[k] = gp[static_cast<I>(i) * gI];
        } else {
          gx[k] = T(0);
          raise_flag(bad);
        }
      }
      n += dn;
      pc += dpc;
      if (pc >= Cp) {
        pc -= Cp;
        ++n;
      }
    }
  }
};

#undef FK_UNPOOL_ROW_ELEMENT
#undef FK_UNPOOL_FOR_PLANES
#undef FK_UNPOOL_FOR_ROWS

// Pooling windows disjoint and each with at least one output in range: the condition
// under which the fast kernel's per-window check covers every input.
inline bool fast_path_applies(const UnpoolProblem& u, at::IntArrayRef k, at::IntArrayRef s,
                              at::IntArrayRef pad) {
  return s[0] >= k[0] && s[1] >= k[1] && pad[0] < k[0] && pad[1] < k[1] &&
         (u.IH - 1) * s[0] - pad[0] < u.OH && (u.IW - 1) * s[1] - pad[1] < u.OW;
}

// flags[0]: the fast path's "index not in its window" (gates the general path),
// flags[1]: an index out of range. on_demand: the host reads the flags after the fast
// path and skips the general path when it is not needed; returns true when it did so
// (the flags are then known to be clear: no index out of range).
template <typename L, typename T, typename I>
bool unpool_forward(const UnpoolProblem& u, at::IntArrayRef k, at::IntArrayRef s,
                    at::IntArrayRef pad, const at::Tensor& flags, bool on_demand) {
  const T* x = static_cast<const T*>(u.src.const_data_ptr());
  const int64_t* ind = u.indices.const_data_ptr<int64_t>();
  T* y = static_cast<T*>(u.out.mutable_data_ptr());
  int* not_local = flags.mutable_data_ptr<int>();
  int* bad = not_local + 1;
  const I P = u.P, V = u.V, IH = u.IH, IW = u.IW, OH = u.OH, OW = u.OW;
  const int* gate = nullptr;
  int64_t max_blocks = unpool_max_blocks<L>();
  if (fast_path_applies(u, k, s, pad)) {
    const RowsLaunch l = rows_launch(OW * V, OH, P, max_blocks);
    L::launch("max_unpool2d_fast", l.grid, l.block, 0,
              FastForward<T, I>{x, ind, y, not_local, P, V, IH, IW, OH, OW, I(k[0]), I(k[1]),
                                I(s[0]), I(s[1]), I(pad[0]), I(pad[1])});
    if (on_demand) {
      // One D2H copy of both flags: the fast path raises only flags[0] (an index out of
      // range is not in its window either), so clear means done.
      const at::Tensor host = flags.cpu();
      const int* f = host.const_data_ptr<int>();
      if (f[0] == 0 && f[1] == 0) return true;
    } else {
      gate = not_local;
      max_blocks = int64_t(L::sm_count()) * 8;  // one wave: an exit costs little
    }
  }
  // Winners in place in the output when elements have the index's size (the gather
  // overwrites each with its value), else in a scratch buffer.
  at::Tensor scratch;
  I* winner = reinterpret_cast<I*>(y);
  if (sizeof(T) != sizeof(I)) {
    scratch =
        at::empty({u.out.numel()}, u.out.options().dtype(sizeof(I) == 4 ? at::kInt : at::kLong));
    winner = scratch.mutable_data_ptr<I>();
  }
  const RowsLaunch lo = rows_launch(OW * V, OH, P, max_blocks);
  L::launch("max_unpool2d_fill_winners", lo.grid, lo.block, 0,
            FillWinners<I>{winner, gate, P, OH, OW * V});
  const RowsLaunch li = rows_launch(IW * V, IH, P, max_blocks);
  L::launch("max_unpool2d_winners", li.grid, li.block, 0,
            Winners<I>{ind, winner, gate, bad, P, V, IH, IW, OH * OW});
  L::launch("max_unpool2d_gather", lo.grid, lo.block, 0,
            GatherWinners<T, I>{x, y, winner, gate, P, V, IH, IW, OH, OW});
  return false;
}

template <typename L>
at::Tensor max_unpool2d_gpu(const at::Tensor& self, const at::Tensor& indices,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef output_size) {
  const bool on_demand = env_choice("FCN_KERNELS_UNPOOL", {"gated", "ondemand"}) == 1;
  typename L::Guard guard(self.device());
  UnpoolProblem u =
      unpool_forward_problem(self, indices, kernel_size, stride, padding, output_size);
  if (u.out.numel() == 0) return u.out;
  const at::Tensor flags = at::zeros({2}, u.out.options().dtype(at::kInt));
  // The window arithmetic reaches oh + padding and window starts + kernel sizes.
  const bool small = fits_int32({u.src.numel(), u.out.numel(), u.OH + kernel_size[0] + stride[0],
                                 u.OW + kernel_size[1] + stride[1]});
  const bool capturing = L::capturing();
  bool clear = false;
  dispatch_by_element_size(u.out, [&](auto zero) {
    using T = decltype(zero);
    with_index_type(small, [&](auto index_zero) {
      clear = unpool_forward<L, T, decltype(index_zero)>(u, kernel_size, stride, padding, flags,
                                                         on_demand && !capturing);
    });
  });
  // The only host sync, and none during graph capture (see the top of this file).
  if (!capturing && !clear && flags[1].item<int>() != 0) raise_bad_index(indices, u.OH, u.OW);
  return u.out;
}

// Stride of grad_output's flat (H, W) plane, or -1 when element (h, w) is not at
// (h * W + w) * stride for one stride.
inline int64_t flat_plane_stride(const at::Tensor& t) {
  const int64_t H = t.size(2), W = t.size(3);
  if (W == 1) return t.stride(2);
  if (H == 1 || t.stride(2) == W * t.stride(3)) return t.stride(3);
  return -1;
}

template <typename L>
at::Tensor max_unpool2d_backward_gpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, bool check_indices) {
  typename L::Guard guard(grad_output.device());
  // grad_output is read through its strides (y.sum().backward() hands an expanded,
  // stride-0 one): no copy unless its plane is not flat.
  UnpoolProblem u = unpool_backward_problem(grad_output, indices, kernel_size, stride, padding,
                                            /*strided_src=*/true);
  if (u.out.numel() == 0) return u.out;
  if (flat_plane_stride(u.src) < 0) u.src = u.src.contiguous(layout_of(u.src));
  const bool check = check_indices && !L::capturing();
  const at::Tensor flag = check ? at::zeros({1}, u.out.options().dtype(at::kInt)) : at::Tensor();
  // Channels folded into the planes: all of them for NCHW (V = 1), none for channels_last.
  const int64_t Cp = u.V == 1 ? u.src.size(1) : 1;
  dispatch_by_element_size(u.out, [&](auto zero) {
    using T = decltype(zero);
    with_index_type(fits_int32({u.out.numel(), element_span(u.src)}), [&](auto index_zero) {
      using I = decltype(index_zero);
      const RowsLaunch l = rows_launch(u.IW * u.V, u.IH, u.P, unpool_max_blocks<L>());
      L::launch("max_unpool2d_backward", l.grid, l.block, 0,
                GatherBackward<T, I>{static_cast<const T*>(u.src.const_data_ptr()),
                                     u.indices.const_data_ptr<int64_t>(),
                                     static_cast<T*>(u.out.mutable_data_ptr()),
                                     check ? flag.mutable_data_ptr<int>() : nullptr, I(u.P), I(u.V),
                                     I(Cp), I(u.IH), I(u.IW), I(u.OH * u.OW), I(u.src.stride(0)),
                                     I(u.src.stride(1)), I(flat_plane_stride(u.src))});
    });
  });
  if (check && flag.item<int>() != 0) raise_bad_index(indices, u.OH, u.OW);
  return u.out;
}

// The operators' registrations, for the launcher's library and dispatch key
// (unpool/cuda.cu: fcn_kernels/CUDA, unpool/emu.cpp: fcn_kernels_emu/CPU).
template <typename L>
void register_ops(torch::Library& m) {
  m.impl("max_unpool2d", &max_unpool2d_gpu<L>);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_gpu<L>);
}

}  // namespace
}  // namespace fcn_kernels
