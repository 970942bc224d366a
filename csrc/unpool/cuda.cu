// Max-unpooling on CUDA: the GPU code of unpool/gpu.h run by the CUDA launcher.
#include <torch/library.h>

#include "gpu/cuda_launcher.cuh"
#include "unpool/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  m.impl("max_unpool2d", &max_unpool2d_gpu<CudaLauncher>);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_gpu<CudaLauncher>);
}

}  // namespace fcn_kernels
