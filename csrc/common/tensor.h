// Tensor helpers shared by every operator's CPU and GPU code: the FK_HD marker for
// code compiled for both host and device, the working-layout rule and common checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <utility>

#ifdef __CUDACC__
#define FK_HD __host__ __device__ __forceinline__
#else
#define FK_HD inline
#endif

namespace fcn_kernels {

// Output/working layout: channels_last when the tensor is exactly channels_last
// contiguous (and not also plain contiguous), otherwise NCHW. The fake kernels in
// fcn_kernels/_common.py apply the same rule so strides match under torch.compile.
inline at::MemoryFormat layout_of(const at::Tensor& t) {
  return (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// (P, V) of the (P, H, W, V) view every kernel works on: P = N*C planes of V = 1 for
// NCHW, P = N images of V = C interleaved channels for channels_last. A spatial row is
// then always W*V contiguous elements, whatever the layout.
inline std::pair<int64_t, int64_t> planes_and_vec(const at::Tensor& t, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::ChannelsLast) return {t.size(0), t.size(1)};
  return {t.size(0) * t.size(1), 1};
}

inline void check_float4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be a 4-D (N, C, H, W) tensor, got ", t.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

// `t` (called `name`) has `ref`'s dtype and device; `whose` names ref ("the input's").
inline void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* whose) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type() && t.device() == ref.device(), name,
                   " must have ", whose, " dtype and device (", ref.scalar_type(), ", ",
                   ref.device(), "), got ", t.scalar_type(), " on ", t.device());
}

}  // namespace fcn_kernels
