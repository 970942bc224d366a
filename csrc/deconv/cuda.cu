// conv_transpose2d_crop's GPU code (deconv/gpu.h) instantiated for CUDA.
#include <torch/library.h>

#include "gpu/cuda_launcher.cuh"
#include "deconv/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels, CUDA, m) {
  using deconv_gpu::conv_transpose2d_crop_backward_input_gpu;
  using deconv_gpu::conv_transpose2d_crop_backward_weight_gpu;
  using deconv_gpu::conv_transpose2d_crop_gpu;
  m.impl("conv_transpose2d_crop", &conv_transpose2d_crop_gpu<CudaLauncher>);
  m.impl("conv_transpose2d_crop_backward_input",
         &conv_transpose2d_crop_backward_input_gpu<CudaLauncher>);
  m.impl("conv_transpose2d_crop_backward_weight",
         &conv_transpose2d_crop_backward_weight_gpu<CudaLauncher>);
}

}  // namespace fcn_kernels
