// State of the GPU host code that tests may change, and the fcn_kernels_emu test hooks.
#include <torch/library.h>

#include <limits>

#include "gpu/launch.h"

namespace fcn_kernels {

// Offsets stay below int32's range by a margin of one maximal block's worth of threads
// past the last element (grid-stride loops step that far).
int64_t& index32_limit() {
  static int64_t limit = std::numeric_limits<int32_t>::max() - 2 * kMaxThreadsPerBlock * 65535;
  return limit;
}

bool& emu_capturing() {
  static bool capturing = false;
  return capturing;
}

namespace {

// Returns the previous limit; 0 or less restores the default.
int64_t set_index32_limit(int64_t limit) {
  static const int64_t default_limit = index32_limit();
  const int64_t old = index32_limit();
  index32_limit() = limit > 0 ? std::min(limit, default_limit) : default_limit;
  return old;
}

bool set_emu_capturing(bool capturing) {
  const bool old = emu_capturing();
  emu_capturing() = capturing;
  return old;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fcn_kernels_emu, m) {
  m.def("_set_index32_limit(int limit) -> int", &set_index32_limit);
  m.def("_set_capturing(bool capturing) -> bool", &set_emu_capturing);
}

}  // namespace fcn_kernels
