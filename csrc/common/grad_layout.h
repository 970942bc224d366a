// Gradients as autograd hands them to a backward: often not contiguous. `loss = y.sum()`
// (or .mean()) gives an expanded gradient (every stride 0); a loss on a slice, a cat or a
// transpose gives a strided one. Copying such a gradient to a contiguous one costs a
// full write and read of the output-sized map, more than some backwards themselves; ATen
// avoids it where its kernels read through strides (e.g. max_unpool2d's gather).
#pragma once

#include <ATen/core/Tensor.h>

namespace fcn_kernels {

// True when every (n, c) plane of the 4-D tensor `t` holds one value (stride 0, or
// extent 1, along H and W): the backward of a constant per plane, computed from
// t[:, :, 0, 0] without reading, or copying, the expanded map.
inline bool is_plane_constant(const at::Tensor& t) {
  return t.dim() == 4 && t.numel() > 0 && (t.size(2) == 1 || t.stride(2) == 0) &&
         (t.size(3) == 1 || t.stride(3) == 0);
}

// The (N, C) values of a plane-constant tensor (a strided view, no copy).
inline at::Tensor plane_values(const at::Tensor& t) {
  return t.select(3, 0).select(2, 0);
}

}  // namespace fcn_kernels
