// Max-unpooling's GPU code (unpool/gpu.h) run on the CPU by the emulated launcher:
// torch.ops.fcn_kernels_emu.max_unpool2d{,_backward}, for tests without a GPU.
#include <torch/library.h>

#include "gpu/emu_launcher.h"
#include "unpool/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels_emu, CPU, m) {
  m.impl("max_unpool2d", &max_unpool2d_gpu<EmuLauncher>);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_gpu<EmuLauncher>);
}

}  // namespace fcn_kernels
