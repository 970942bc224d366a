// conv_transpose2d_crop's GPU kernel bodies (functors for gpu/launch.h), written once
// for CUDA and the CPU emulation. The host side that picks and launches them is
// deconv/gpu.h.
//
// Cost model (benches/RESULTS.md, CUDA): one thread per pixel of the tensor it writes,
// looping over the planes (n, c) of that pixel, so the tap geometry (a few integer
// divisions by per-launch constants) is paid once per thread, not per element; the
// per-element path is loads, FMAs and one store, in int32 when the host says the
// offsets fit (fits_int32), with acc_t = float for float/half/bfloat16 (no FP64).
// Tensors are read through their strides (any layout, expanded gradients included).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "gpu/launch.h"

namespace fcn_kernels {
namespace deconv_gpu {

template <typename T>
FK_HD T imin(T a, T b) {
  return a < b ? a : b;
}

// One spatial axis. Full-map coordinate of input index i under tap k: Y = i*s - p + k*d;
// the cropped coordinate is o = Y - off.
template <typename index_t>
struct Axis {
  index_t in, out;           // input extent, cropped output extent
  index_t K, s, p, d, off;   // kernel, stride, padding, dilation, crop offset
  index_t g, step, dg, inv;  // gcd(s, d), s/g, d/g, (d/g)^-1 mod s/g (host-computed)
};

// Taps k = k0, k0 + dk, ... (n of them) with their input (forward) or output
// (backward) coordinate c = c0, c0 + dc, ...
template <typename index_t>
struct Taps {
  index_t k0, c0, n;
};

// Forward: the taps that reach cropped output o, and their source rows. With
// A = o + off + p = i*s + k*d, the taps are the k with k*d = A (mod s): one residue class
// mod step = s/g, first k0 = (A mod s)/g * inv (mod step) (closed form, no search), and
// then i falls by dg per tap. Steps: k += a.step, i -= a.dg.
template <typename index_t>
FK_HD Taps<index_t> source_taps(index_t o, const Axis<index_t>& a) {
  const index_t A = o + a.off + a.p;
  const index_t r = A % a.s;
  if (a.g > 1 && r % a.g != 0) return {0, 0, 0};
  const index_t k0 = a.step == 1 ? index_t(0) : (r / a.g) * a.inv % a.step;
  const index_t i0 = (A - k0 * a.d) / a.s;  // exact division
  if (i0 < 0 || k0 >= a.K) return {0, 0, 0};
  const index_t m_end = imin((a.K - k0 + a.step - 1) / a.step, i0 / a.dg + 1);
  const index_t m0 = i0 >= a.in ? (i0 - a.in + a.dg) / a.dg : index_t(0);  // skip i >= in
  if (m0 >= m_end) return {0, 0, 0};
  return {k0 + m0 * a.step, i0 - m0 * a.dg, m_end - m0};
}

// Backward: the taps through which input index i reaches the crop window, and the
// cropped output coordinates: o = B + k*d with B = i*s - p - off, for the contiguous
// range of k with 0 <= o < out. Steps: k += 1, o += a.d.
template <typename index_t>
FK_HD Taps<index_t> target_taps(index_t i, const Axis<index_t>& a) {
  const index_t B = i * a.s - a.p - a.off;
  const index_t last = a.out - 1 - B;  // k*d <= last
  if (last < 0) return {0, 0, 0};
  const index_t k0 = B >= 0 ? index_t(0) : (a.d - 1 - B) / a.d;
  const index_t k1 = imin(a.K - 1, last / a.d);
  if (k0 > k1) return {0, 0, 0};
  return {k0, B + k0 * a.d, k1 - k0 + 1};
}

// Launch geometry of the two gather kernels. Threads along x cover (pixel, v) of the
// written tensor's row with v fastest: v is the channel for channels_last (V = C, so a
// warp writes consecutive addresses), nothing for NCHW (V = 1). Each thread then loops
// over the planes (n, c) with c < cq (cq = C for NCHW, 1 for channels_last; channel
// = v + c), starting at plane blockIdx.z and stepping gridDim.z = (step_n, step_c).
template <typename index_t>
struct Geom {
  Axis<index_t> ay, ax;
  index_t C, V, cq, Q, step_n, step_c;
  index_t cin_g, cout_g, KH, KW;
  index_t rs[4];  // element strides of the tensor read (x, or grad_output)
  index_t ws[4];  // element strides of the tensor written
};

// acc + sum over a < ty.n, b < tx.n of
//   src[(ty.c0 + a*sy) * rs2 + (tx.c0 + b*sx) * rs3] * filt[(ty.k0 + a*ky) * KW + tx.k0 + b*kx]:
// one plane read through one KH x KW filter along the taps' progressions, in a fixed
// order. The forward walks sources down (-d/g) and taps by s/g; the input gradient walks
// outputs up (+d) and taps by 1.
template <typename acc_t, typename scalar_t, typename index_t>
FK_HD acc_t tap_sum(acc_t acc, const scalar_t* src, const scalar_t* filt, const Taps<index_t>& ty,
                    const Taps<index_t>& tx, index_t sy, index_t sx, index_t ky, index_t kx,
                    index_t rs2, index_t rs3, index_t KW) {
  for (index_t a = 0; a < ty.n; ++a) {
    const scalar_t* sr = src + (ty.c0 + a * sy) * rs2;
    const scalar_t* fr = filt + (ty.k0 + a * ky) * KW;
    for (index_t b = 0; b < tx.n; ++b) {
      acc +=
          static_cast<acc_t>(sr[(tx.c0 + b * sx) * rs3]) * static_cast<acc_t>(fr[tx.k0 + b * kx]);
    }
  }
  return acc;
}

// DiagCheckKernel's launch: kDiagBlocks blocks of kDiagThreads threads, one flag byte
// per block.
constexpr int kDiagBlocks = 128, kDiagThreads = 256, kDiagLevels = 8;  // 2^8 threads

// The gather kernels' test of DiagCheckKernel's flags (null: a depthwise weight). On
// the device 8 16-byte loads of the same addresses for every lane (L1 broadcasts).
FK_HD bool diagonal_of_flags(const uint8_t* offdiag) {
  if (offdiag == nullptr) return true;
#ifdef __CUDA_ARCH__
  const uint4* v = reinterpret_cast<const uint4*>(offdiag);
  unsigned any = 0;
#pragma unroll
  for (int i = 0; i < kDiagBlocks / 16; ++i) any |= v[i].x | v[i].y | v[i].z | v[i].w;
#else
  unsigned any = 0;
  for (int i = 0; i < kDiagBlocks; ++i) any |= offdiag[i];
#endif
  return any == 0;
}

// y[n, co, oh, ow] = bias[co] + sum_{ci, ky, kx} x[n, ci, iy, ix] * w[ci, j, ky, kx].
// offdiag: DiagCheckKernel's flags (null: the weight is depthwise). While they are all
// 0 the channel loop is the one channel co (weight wd[co, ky, kx]); otherwise all
// cin_g channels of co's group.
template <typename scalar_t, typename index_t>
struct ForwardKernel {
  const scalar_t* x;
  const scalar_t* w;
  const scalar_t* wd;
  const scalar_t* bias;
  const uint8_t* offdiag;
  scalar_t* y;
  Geom<index_t> q;

  // Sources down by d/g rows (columns) per tap, taps by s/g.
  template <typename acc_t>
  FK_HD acc_t taps(acc_t acc, const scalar_t* plane, const scalar_t* filt, const Taps<index_t>& ty,
                   const Taps<index_t>& tx) const {
    return tap_sum(acc, plane, filt, ty, tx, -q.ay.dg, -q.ax.dg, q.ay.step, q.ax.step, q.rs[2],
                   q.rs[3], q.KW);
  }

  FK_HD void operator()(const Thread& t) const {
    using acc_t = at::opmath_type<scalar_t>;
    const index_t lin = index_t(t.block.x) * index_t(t.block_dim.x) + index_t(t.thread.x);
    if (lin >= q.ax.out * q.V) return;
    const index_t ow = q.V == 1 ? lin : lin / q.V;
    const index_t v = lin - ow * q.V;
    const Taps<index_t> tx = source_taps(ow, q.ax);
    const bool diag = diagonal_of_flags(offdiag);
    const index_t KK = q.KH * q.KW;
    for (index_t oh = index_t(t.block.y) * index_t(t.block_dim.y) + index_t(t.thread.y);
         oh < q.ay.out; oh += index_t(t.grid.y) * index_t(t.block_dim.y)) {
      const Taps<index_t> ty = source_taps(oh, q.ay);
      index_t n = index_t(t.block.z) / q.cq, c = index_t(t.block.z) - n * q.cq;
      for (index_t p = t.block.z; p < q.Q; p += index_t(t.grid.z)) {
        const index_t co = v + c;
        acc_t acc = bias != nullptr ? static_cast<acc_t>(bias[co]) : acc_t(0);
        const scalar_t* xn = x + n * q.rs[0];
        if (diag) {
          acc = taps(acc, xn + co * q.rs[1], wd + co * KK, ty, tx);
        } else {
          const index_t grp = co / q.cout_g, j = co - grp * q.cout_g;
          for (index_t ci = grp * q.cin_g; ci < (grp + 1) * q.cin_g; ++ci) {
            acc = taps(acc, xn + ci * q.rs[1], w + (ci * q.cout_g + j) * KK, ty, tx);
          }
        }
        y[n * q.ws[0] + co * q.ws[1] + oh * q.ws[2] + ow * q.ws[3]] = static_cast<scalar_t>(acc);
        c += q.step_c;
        n += q.step_n;
        if (c >= q.cq) {
          c -= q.cq;
          ++n;
        }
      }
    }
  }
};

// gx[n, ci, iy, ix] = sum_{j, ky, kx} grad[n, g*cout_g + j, oh, ow] * w[ci, j, ky, kx] over
// the taps that land inside the crop; the same flag protocol as ForwardKernel.
template <typename scalar_t, typename index_t>
struct BackwardInputKernel {
  const scalar_t* grad;
  const scalar_t* w;
  const scalar_t* wd;
  const uint8_t* offdiag;
  scalar_t* gx;
  Geom<index_t> q;

  // Outputs up by d rows (columns) per tap, taps by 1.
  template <typename acc_t>
  FK_HD acc_t taps(acc_t acc, const scalar_t* plane, const scalar_t* filt, const Taps<index_t>& ty,
                   const Taps<index_t>& tx) const {
    return tap_sum(acc, plane, filt, ty, tx, q.ay.d, q.ax.d, index_t(1), index_t(1), q.rs[2],
                   q.rs[3], q.KW);
  }

  // gx at input channel ci of the plane gn of image n, for taps (ty, tx).
  template <typename acc_t>
  FK_HD acc_t pixel(const scalar_t* gn, index_t ci, const Taps<index_t>& ty,
                    const Taps<index_t>& tx, bool diag) const {
    const index_t KK = q.KH * q.KW;
    if (diag) return taps(acc_t(0), gn + ci * q.rs[1], wd + ci * KK, ty, tx);
    acc_t acc = acc_t(0);
    const index_t grp = ci / q.cin_g;
    for (index_t j = 0; j < q.cout_g; ++j) {
      acc = taps(acc, gn + (grp * q.cout_g + j) * q.rs[1], w + (ci * q.cout_g + j) * KK, ty, tx);
    }
    return acc;
  }

  FK_HD void operator()(const Thread& t) const {
    using acc_t = at::opmath_type<scalar_t>;
    const index_t lin = index_t(t.block.x) * index_t(t.block_dim.x) + index_t(t.thread.x);
    if (lin >= q.ax.in * q.V) return;
    const index_t ix = q.V == 1 ? lin : lin / q.V;
    const index_t v = lin - ix * q.V;
    const Taps<index_t> tx = target_taps(ix, q.ax);
    const bool diag = diagonal_of_flags(offdiag);
    for (index_t iy = index_t(t.block.y) * index_t(t.block_dim.y) + index_t(t.thread.y);
         iy < q.ay.in; iy += index_t(t.grid.y) * index_t(t.block_dim.y)) {
      const Taps<index_t> ty = target_taps(iy, q.ay);
      index_t n = index_t(t.block.z) / q.cq, c = index_t(t.block.z) - n * q.cq;
      for (index_t p = t.block.z; p < q.Q; p += index_t(t.grid.z)) {
        const index_t ci = v + c;
        const acc_t acc = pixel<acc_t>(grad + n * q.rs[0], ci, ty, tx, diag);
        gx[n * q.ws[0] + ci * q.ws[1] + iy * q.ws[2] + ix * q.ws[3]] = static_cast<scalar_t>(acc);
        c += q.step_c;
        n += q.step_n;
        if (c >= q.cq) {
          c -= q.cq;
          ++n;
        }
      }
    }
  }
};

// Whether the weight is channel-diagonal, decided on the device on every call: no host
// sync (CUDA-graph capture works) and nothing kept between calls, so a write that does
// not bump the weight's version (`.data`, NumPy or DLPack aliases) is always seen.
// Block b sets offdiag[b] (so no zeroing launch is needed) to 1 when its share holds a
// non-zero entry (NaN and Inf included) off the diagonal of a group's square
// (cin_g x cin_g) block, else 0, through a fixed shared-memory OR tree; the diagonal is
// copied to wd[ci, ky, kx] for the diagonal loops. The gather kernels OR the flags
// (diagonal_of_flags). Threads: x along a filter's KK taps (coalesced), y and the
// blocks over the rows = Cin * cin_g filters, whose (ci, j, ci mod cin_g) are stepped
// without division (a step of `step` rows = step_q * cin_g + step_r).
template <typename scalar_t, typename index_t>
struct DiagCheckKernel {
  static constexpr int kPhases = 1 + kDiagLevels;
  const scalar_t* w;
  scalar_t* wd;
  uint8_t* offdiag;                                  // kDiagBlocks flags
  index_t rows, KK, cin_g, step_q, step_qm, step_r;  // step_qm = step_q mod cin_g

  FK_HD void operator()(const Thread& t) const {
    using acc_t = at::opmath_type<scalar_t>;
    const auto sm = t.shared<int>();
    const int tid = int(t.thread.y * t.block_dim.x + t.thread.x);
    if (t.phase > 0) {  // level `phase` of the tree: halves the live entries
      const int half = kDiagThreads >> t.phase;
      if (tid < half) sm[tid] |= sm[tid + half];
      if (t.phase == kDiagLevels && tid == 0) offdiag[t.block.x] = uint8_t(sm[0]);
      return;
    }
    int any = 0;
    index_t r = index_t(t.block.x) * index_t(t.block_dim.y) + index_t(t.thread.y);
    index_t ci = r / cin_g, j = r - ci * cin_g, cm = ci % cin_g;  // row r = (ci, j)
    const index_t step = index_t(t.grid.x) * index_t(t.block_dim.y);
    for (; r < rows; r += step) {
      const scalar_t* row = w + r * KK;
      if (j == cm) {
        for (index_t k = t.thread.x; k < KK; k += index_t(t.block_dim.x)) wd[ci * KK + k] = row[k];
      } else {
        for (index_t k = t.thread.x; k < KK; k += index_t(t.block_dim.x)) {
          any |= static_cast<acc_t>(row[k]) != acc_t(0);
        }
      }
      j += step_r;
      ci += step_q;
      cm += step_qm;
      if (j >= cin_g) {
        j -= cin_g;
        ++ci;
        ++cm;
      }
      if (cm >= cin_g) cm -= cin_g;
    }
    sm[tid] = any;
  }
};

constexpr int kWgradX = 32, kWgradY = 8, kWgradThreads = kWgradX * kWgradY;
constexpr int kWgradLevels = 8;  // log2(kWgradThreads)

// gw[ci, j, ky, kx] = sum_{n, iy, ix} x[n, ci, iy, ix] * grad[n, g*cout_g + j, oh, ow]:
// one block per weight element (blockIdx.x) and slice of its (n, iy) rows (blockIdx.y
// of S), 256 threads summing strided shares, then a fixed-order shared-memory tree, so
// the bits depend only on the shapes. S == 1 writes gw, else partial[e * S + slice]
// (WeightGradFinishKernel adds the S partials in order).
template <typename scalar_t, typename index_t>
struct WeightGradKernel {
  static constexpr int kPhases = 1 + kWgradLevels;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad;
  const scalar_t* x;
  scalar_t* gw;
  acc_t* partial;
  Axis<index_t> ay, ax;
  index_t N, cin_g, cout_g, KH, KW, S;
  index_t gs[4], xs[4];  // element strides of grad_output and x

  FK_HD void operator()(const Thread& t) const {
    auto sm = t.shared<acc_t>();
    const int tid = int(t.thread.y) * kWgradX + int(t.thread.x);
    if (t.phase > 0) {
      const int half = kWgradThreads >> t.phase;
      if (tid < half) sm[tid] += sm[tid + half];
      if (t.phase == kWgradLevels && tid == 0) {
        if (S == 1) {
          gw[t.block.x] = static_cast<scalar_t>(sm[0]);
        } else {
          partial[int64_t(t.block.x) * S + t.block.y] = sm[0];
        }
      }
      return;
    }
    index_t e = t.block.x;
    const index_t kx = e % KW;
    e /= KW;
    const index_t ky = e % KH;
    e /= KH;
    const index_t j = e % cout_g, ci = e / cout_g;
    const index_t co = (ci / cin_g) * cout_g + j;
    // Valid input rows/columns: o = i*s + c with c = k*d - p - off, 0 <= o < out.
    index_t lo[2], cnt[2], cc[2];
    const Axis<index_t>* axes[2] = {&ay, &ax};
    const index_t ks[2] = {ky, kx};
    for (int a = 0; a < 2; ++a) {
      const Axis<index_t>& A = *axes[a];
      cc[a] = ks[a] * A.d - A.p - A.off;
      const index_t l = cc[a] >= 0 ? index_t(0) : (A.s - 1 - cc[a]) / A.s;
      const index_t top = A.out - 1 - cc[a];
      const index_t h = top < 0 ? index_t(-1) : imin(A.in - 1, top / A.s);
      lo[a] = l;
      cnt[a] = h >= l ? h - l + 1 : index_t(0);
    }
    acc_t acc = acc_t(0);
    if (cnt[0] > 0 && cnt[1] > 0) {
      // Slice z of S: rows [z*base + min(z, rem), ...) with rows = base*S + rem, in
      // index_t (no 64-bit division in the int32 variant).
      const index_t rows = N * cnt[0], base = rows / S, rem = rows % S, z = t.block.y;
      const index_t r0 = z * base + imin(z, rem), r1 = r0 + base + (z < rem ? 1 : 0);
      index_t r = r0 + index_t(t.thread.y);
      index_t n = r / cnt[0], a = r - n * cnt[0];
      for (; r < r1; r += kWgradY) {
        const index_t iy = lo[0] + a, oh = iy * ay.s + cc[0];
        const scalar_t* xr = x + n * xs[0] + ci * xs[1] + iy * xs[2];
        const scalar_t* gr = grad + n * gs[0] + co * gs[1] + oh * gs[2];
        for (index_t b = t.thread.x; b < cnt[1]; b += kWgradX) {
          const index_t ix = lo[1] + b;
          acc += static_cast<acc_t>(xr[ix * xs[3]]) *
                 static_cast<acc_t>(gr[(ix * ax.s + cc[1]) * gs[3]]);
        }
        a += kWgradY;
        while (a >= cnt[0]) {
          a -= cnt[0];
          ++n;
        }
      }
    }
    sm[tid] = acc;
  }
};

// gw[e] = sum over the S slices of partial[e * S + slice], in slice order.
template <typename scalar_t, typename index_t>
struct WeightGradFinishKernel {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* partial;
  scalar_t* gw;
  index_t numel, S;

  FK_HD void operator()(const Thread& t) const {
    const index_t e = index_t(t.block.x) * index_t(t.block_dim.x) + index_t(t.thread.x);
    if (e >= numel) return;
    const acc_t* p = partial + int64_t(e) * S;
    acc_t acc = p[0];
    for (index_t z = 1; z < S; ++z) acc += p[z];
    gw[e] = static_cast<scalar_t>(acc);
  }
};

}  // namespace deconv_gpu
}  // namespace fcn_kernels
