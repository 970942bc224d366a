// max_unpool2d's GPU code (unpool/gpu.h) launched by the CUDA launcher.
#include <torch/library.h>

#include "gpu/cuda_launcher.cuh"
#include "unpool/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  register_ops<CudaLauncher>(m);
}

}  // namespace fcn_kernels
