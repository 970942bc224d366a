// conv_transpose2d_crop's GPU code (deconv/gpu.h) launched by the CUDA launcher.
#include <torch/library.h>

#include "gpu/cuda_launcher.cuh"
#include "deconv/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  deconv_gpu::register_ops<CudaLauncher>(m);
}

}  // namespace fcn_kernels
