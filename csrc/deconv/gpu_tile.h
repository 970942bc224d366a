// The input gradient's shared-memory tile kernel (FCN_KERNELS_DECONV_GRAD_INPUT=tile,
// deconv/variant.h), an alternative to BackwardInputKernel for the gather path.
//
// Why: BackwardInputKernel's lanes are consecutive input columns ix, whose taps read
// gradient columns s apart, so at stride 8 one warp load touches 8 L1 lines (the kernel
// is L1-wavefront-bound, benches/RESULTS.md). Here a block of kTileX x TY threads (one
// input pixel each, one plane per block) first copies the gradient window its pixels
// read into shared memory, phase-major: window column c at (c mod s) * Ws + c / s, so
// the 32 lanes of a row, whose columns are c = lane * s + k * d, read 32 consecutive
// words (one wavefront); Ws is padded so that the copy's stores spread over the banks.
// Phase 0 writes the tile (each element by one thread), the barrier, phase 1 reads it.
// A weight the flags say is not channel-diagonal needs every channel of the group: then
// phase 0 copies nothing and phase 1 runs BackwardInputKernel's loop for the pixel.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>

#include "deconv/gpu_kernels.h"
#include "gpu/launch.h"

namespace fcn_kernels {
namespace deconv_gpu {

constexpr int kTileX = 32;  // input columns per block: one warp per input row

// The window of full-map gradient rows (or columns) that `tile` consecutive input rows
// read along axis a: (tile - 1) * s + (K - 1) * d + 1.
inline int64_t tile_window(int64_t tile, int64_t K, int64_t s, int64_t d) {
  return (tile - 1) * s + (K - 1) * d + 1;
}

// Ws: elements per phase row, ceil(window / s) padded so that 32 consecutive columns
// (ceil(32 / s) quotients per phase) fall in distinct banks.
inline int64_t tile_phase_pitch(int64_t window, int64_t s) {
  const int64_t ws = (window + s - 1) / s, want = ((32 + s - 1) / s) % 32;
  return ws + ((want - ws % 32) % 32 + 32) % 32;
}

inline int64_t tile_smem_bytes(int64_t ty, int64_t KH, int64_t KW, at::IntArrayRef stride,
                               at::IntArrayRef dilation, int64_t elem) {
  const int64_t rows = tile_window(ty, KH, stride[0], dilation[0]);
  const int64_t ws = tile_phase_pitch(tile_window(kTileX, KW, stride[1], dilation[1]), stride[1]);
  return rows * stride[1] * ws * elem;
}

// Input rows per block: the most of 8, 4, 2, 1 whose window fits the default shared
// memory; 0 when none does (FCN-32s's k64 s32: the gather kernel runs).
inline int64_t tile_rows(int64_t KH, int64_t KW, at::IntArrayRef stride, at::IntArrayRef dilation,
                         int64_t elem) {
  for (int64_t ty = 8; ty >= 1; ty /= 2) {
    if (tile_smem_bytes(ty, KH, KW, stride, dilation, elem) <= kMaxSharedBytes) return ty;
  }
  return 0;
}

template <typename scalar_t, typename index_t>
struct TileGradInputKernel {
  static constexpr int kPhases = 2;
  BackwardInputKernel<scalar_t, index_t> g;  // pointers and geometry (g.q)
  index_t tiles_x, TY, rows, cols, Ws, P;    // tiles along W, rows per tile, window, planes
  index_t lane_q, lane_r;                    // kTileX / s, kTileX % s (a copy step)
  index_t d_q, d_r;                          // d / s, d % s (a tap step), along x

  FK_HD void operator()(const Thread& t) const {
    using acc_t = at::opmath_type<scalar_t>;
    const Geom<index_t>& q = g.q;
    const index_t p = index_t(t.block.z) * index_t(t.grid.y) + index_t(t.block.y);
    if (p >= P) return;  // the whole block: no barrier is left waiting
    const index_t n = p / q.C, ci = p - n * q.C;
    const index_t by = index_t(t.block.x) / tiles_x, bx = index_t(t.block.x) - by * tiles_x;
    const index_t tx = index_t(t.thread.x), ty = index_t(t.thread.y);
    // Full-map (cropped) gradient coordinates of the window's first row and column.
    const index_t oy0 = by * TY * q.ay.s - q.ay.p - q.ay.off;
    const index_t ox0 = bx * kTileX * q.ax.s - q.ax.p - q.ax.off;
    const index_t s = q.ax.s, pitch = s * Ws;
    const bool diag = diagonal_of_flags(g.offdiag);
    const auto sm = t.shared<scalar_t>();
    const scalar_t* gp = g.grad + n * q.rs[0] + ci * q.rs[1];  // diagonal: plane ci
    if (t.phase == 0) {
      if (!diag) return;
      // The window's rows and columns inside the gradient; the others are never read.
      const index_t r1 = imin(rows, q.ay.out - oy0), c1 = imin(cols, q.ax.out - ox0);
      const index_t c0 = (ox0 < 0 ? -ox0 : index_t(0)) + tx;
      for (index_t r = (oy0 < 0 ? -oy0 : index_t(0)) + ty; r < r1; r += TY) {
        const scalar_t* src = gp + (oy0 + r) * q.rs[2] + ox0 * q.rs[3];
        const auto dst = sm + r * pitch;
        index_t ph = c0 % s, qt = c0 / s;
        for (index_t c = c0; c < c1; c += kTileX) {
          dst[ph * Ws + qt] = src[c * q.rs[3]];
          ph += lane_r;
          qt += lane_q;
          if (ph >= s) {
            ph -= s;
            ++qt;
          }
        }
      }
      return;
    }
    const index_t iy = by * TY + ty, ix = bx * kTileX + tx;
    if (iy >= q.ay.in || ix >= q.ax.in) return;
    const Taps<index_t> tyy = target_taps(iy, q.ay), txx = target_taps(ix, q.ax);
    acc_t acc = acc_t(0);
    if (diag) {
      // Column c = txx.c0 - ox0 = tx * s + k0 * d: phase (k0 * d) mod s, quotient tx + ...
      const index_t c = txx.c0 - ox0, wrap = 1 - pitch, step = d_r * Ws + d_q;
      const index_t idx0 = (c % s) * Ws + c / s;
      const scalar_t* filt = g.wd + ci * q.KH * q.KW + tyy.k0 * q.KW + txx.k0;
      for (index_t a = 0; a < tyy.n; ++a) {
        const auto row = sm + (tyy.c0 - oy0 + a * q.ay.d) * pitch;
        const scalar_t* fr = filt + a * q.KW;
        index_t ph = c % s, idx = idx0;
        if (d_r == 1) {
          // Dilation 1 (FCN): runs of s - ph taps one phase row (Ws) apart, then a wrap.
          for (index_t b = 0; b < txx.n; ph = 0, idx += wrap) {
            const index_t end = imin(txx.n, b + s - ph);
            for (; b < end; ++b, idx += step) {
              acc += static_cast<acc_t>(scalar_t(row[idx])) * static_cast<acc_t>(fr[b]);
            }
          }
          continue;
        }
        for (index_t b = 0; b < txx.n; ++b) {
          acc += static_cast<acc_t>(scalar_t(row[idx])) * static_cast<acc_t>(fr[b]);
          ph += d_r;
          idx += step;
          if (ph >= s) {
            ph -= s;
            idx += wrap;
          }
        }
      }
    } else {
      acc = g.template pixel<acc_t>(g.grad + n * q.rs[0], ci, tyy, txx, false);
    }
    g.gx[n * q.ws[0] + ci * q.ws[1] + iy * q.ws[2] + ix * q.ws[3]] = static_cast<scalar_t>(acc);
  }
};

// Launches TileGradInputKernel for BackwardInputKernel g's pixels: tiles of kTileX x ty
// input pixels (grid.x) of each of the N * C planes (grid.y, then grid.z).
template <typename L, typename scalar_t, typename index_t>
void launch_tile_grad_input(BackwardInputKernel<scalar_t, index_t> g, int64_t N, int64_t C,
                            int64_t ty) {
  const Axis<index_t>&ay = g.q.ay, &ax = g.q.ax;
  g.q.C = index_t(C);
  TileGradInputKernel<scalar_t, index_t> k{};
  k.g = g;
  k.TY = index_t(ty);
  k.rows = index_t(tile_window(ty, ay.K, ay.s, ay.d));
  k.cols = index_t(tile_window(kTileX, ax.K, ax.s, ax.d));
  k.Ws = index_t(tile_phase_pitch(k.cols, ax.s));
  k.lane_q = index_t(kTileX / ax.s);
  k.lane_r = index_t(kTileX % ax.s);
  k.d_q = ax.d / ax.s;
  k.d_r = ax.d % ax.s;
  const int64_t tiles_x = (int64_t(ax.in) + kTileX - 1) / kTileX;
  const int64_t tiles = tiles_x * ((int64_t(ay.in) + ty - 1) / ty), P = N * C;
  TORCH_CHECK(tiles <= kMaxGridX, "deconv_backward_input_tile: ", tiles, " tiles per plane");
  k.tiles_x = index_t(tiles_x);
  k.P = index_t(P);
  const int64_t gy = std::min<int64_t>(P, kMaxGridYZ);
  const size_t smem = size_t(k.rows) * size_t(ax.s) * size_t(k.Ws) * sizeof(scalar_t);
  L::launch("deconv_backward_input_tile", Extent{tiles, gy, ceil_div(P, gy)}, Extent{kTileX, ty},
            smem, k);
}

}  // namespace deconv_gpu
}  // namespace fcn_kernels
