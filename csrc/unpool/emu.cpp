// max_unpool2d's GPU code (unpool/gpu.h) run on the CPU by the emulating launcher:
// torch.ops.fcn_kernels_emu.* on CPU tensors (fcn_kernels.testing.emulated_cuda()).
#include <torch/library.h>

#include "gpu/emu_launcher.h"
#include "unpool/gpu.h"

namespace fcn_kernels {

TORCH_LIBRARY_IMPL(fcn_kernels_emu, CPU, m) {
  register_ops<EmuLauncher>(m);
}

}  // namespace fcn_kernels
