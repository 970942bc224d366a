// The CPU transposed convolution's parts, shared by its translation units:
//   cpu.cpp           entry points and the choice of path
//   cpu_diagonal.cpp  channel-diagonal weights (FCN's bilinear upsampling, depthwise)
//   cpu_phase.cpp     any other weight: sub-pixel (phase) decomposition into GEMMs,
//                     with cpu_gemm.h (AVX-512 micro-kernels) and cpu_move.h (the
//                     data-movement leaves)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fcn_kernels {
namespace deconv_cpu {

// ---- channel-diagonal paths (cpu_diagonal.cpp) -------------------------------------

// Taps along one axis in CSR form: for position a, pairs (k[j], idx[j]) for j in
// [start[a], start[a+1]).
struct Taps {
  std::vector<int64_t> start{0}, k, idx;
  void add(int64_t kk, int64_t i) {
    k.push_back(kk);
    idx.push_back(i);
  }
  void close() { start.push_back(static_cast<int64_t>(k.size())); }
};

// Forward direction: cropped output o in [0, out) reads input i in [0, in) through tap
// k in [k0, k1).
Taps source_taps(int64_t out, int64_t off, int64_t k0, int64_t k1, int64_t s, int64_t p, int64_t d,
                 int64_t in);
// Backward direction: input i in [0, in) is read by cropped output o in [0, out)
// through tap k in [0, K).
Taps target_taps(int64_t in, int64_t K, int64_t s, int64_t p, int64_t d, int64_t off, int64_t out);

// One axis of the transposed convolution: input i reaches cropped output
// i * stride + k * dilation - padding - offset through tap k.
struct DeconvAxis {
  int64_t stride, dilation, padding, offset;
};

// A channel-diagonal product on the (P, H, W, V) view (common/tensor.h) of `in` and
// `out`: out[p, a, b, v] = sum over row taps (k1, i1) of a and column taps (k2, i2) of
// b of in[p, i1, i2, v] * wd[c, k1, k2]. Forward: in = x, source taps; backward-input:
// in = grad_output, target taps.
struct DiagonalProduct {
  int64_t planes, vec;  // P and V
  const Taps& rows;     // per output row a: (k1, i1)
  const Taps& cols;     // per output column b: (k2, i2)
  bool forward;
  DeconvAxis col_axis;  // along a row (the direct NCHW loop needs no tap tables)
};

// The weight is one filter repeated on the diagonal ("uniform", FCN's): runs the 1-D
// map loops of common/separable.h. False (nothing written) when the filters differ.
// wd: (C, KH, KW) diagonal in the accumulation type.
template <typename scalar_t>
bool uniform_diagonal(const at::Tensor& in, at::Tensor& out, const at::Tensor& wd,
                      const DiagonalProduct& prod);

// Any channel-diagonal weight, plus `bias` (accumulation type, or undefined) added to
// every output: a direct gather.
template <typename scalar_t>
void diagonal_gather(const at::Tensor& in, at::Tensor& out, const at::Tensor& wd,
                     const at::Tensor& bias, const DiagonalProduct& prod);

// ---- phase decomposition (cpu_phase.cpp) ---------------------------------------------

// One axis. Crop index a sits at Z = a + pre (pre = offset + padding), in block Z / s
// and phase Z % s; the crop spans blocks q0 .. q0 + nq - 1. Block j (counted from q0)
// reads, through offset m, position j + m.back() - m of the input padded to nq + dm
// positions (dm = m.back() - m.front()) starting at input index q0 - m.back().
struct PhaseAxis {
  int64_t s = 1, pre = 0, q0 = 0, nq = 0, dm = 0;
  std::vector<int64_t> m;      // the distinct offsets m, ascending
  std::vector<int64_t> r, mi;  // per tap k: its phase and the index of its m
};

// Both axes, per-group channels and the GEMM sizes: K = cin * |m_h| * |m_w| rows
// (ci, i_h, i_w) of col, M = cout * s_h * s_w rows (co, r_h, r_w) of D. Padded input
// planes are Hp x Wp; a block row of col / D has Wp blocks, of which the last dm_w are
// unused (so that col rows are plain copies of padded planes). The N * h.nq block rows
// are split into chunks of rc rows.
struct PhaseGeom {
  PhaseAxis h, w;
  int64_t G = 1, cin = 0, cout = 0, K = 0, M = 0, Hp = 0, Wp = 0, rows = 0, rc = 1, chunks = 0;
};

PhaseGeom phase_geom(int64_t N, int64_t Cin, at::IntArrayRef w, int64_t groups,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     at::IntArrayRef offset, int64_t OH, int64_t OW, int64_t elem_size);

// Whether the AVX-512 float GEMM kernels (cpu_gemm.h) run: an AVX-512 CPU as ATen
// sees it.
bool avx512_gemm();

// The three products. T: the tensors' type; gemm_t: the buffers' and GEMMs' (float for
// the AVX-512 kernels, else T with ATen's mm). Instantiated in cpu_phase.cpp for the
// pairs with_compute_type (cpu.cpp) chooses.
template <typename T, typename gemm_t>
void phase_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   at::Tensor& y, const PhaseGeom& geom);
template <typename T, typename gemm_t>
void phase_backward_input(const at::Tensor& grad, const at::Tensor& weight, at::Tensor& gx,
                          const PhaseGeom& geom);
template <typename T, typename gemm_t>
at::Tensor phase_backward_weight(const at::Tensor& grad, const at::Tensor& x,
                                 at::IntArrayRef weight_size, const PhaseGeom& geom);

}  // namespace deconv_cpu
}  // namespace fcn_kernels
