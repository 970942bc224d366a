// State of the GPU host code that tests may change, and the fcn_kernels_emu test hooks.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "gpu/emu_launcher.h"
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

// The launcher's own test: a two-phase block reduction through shared memory.
// out[b] = sum over the block's threads of their global index.
struct BlockSum {
  static constexpr int kPhases = 2;
  int64_t* out;

  void operator()(const Thread& t) const {
    auto* partial = reinterpret_cast<int64_t*>(t.smem);
    if (t.phase == 0) {
      partial[t.thread.x] = int64_t(t.block.x) * t.block_dim.x + t.thread.x;
    } else if (t.thread.x == 0) {  // runs after every thread's phase 0
      int64_t s = 0;
      for (uint32_t i = 0; i < t.block_dim.x; ++i) s += partial[i];
      out[t.block.x] = s;
    }
  }
};

struct Nothing {
  void operator()(const Thread&) const {}
};

// kernel "sum": `grid` blocks of BlockSum, returns out[b]. kernel "elements": a launch
// of empty threads over `grid` elements, its grid sized by ceil_div as the ops' host
// code does (nothing is allocated, so oversized launches are testable); returns [].
at::Tensor launch_self_test(int64_t grid, int64_t block, int64_t smem, c10::string_view kernel) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  if (kernel == "elements") {
    TORCH_CHECK(block >= 1, "launch_self_test: block must be positive");
    EmuLauncher::launch("launch_self_test", Extent{ceil_div(grid, block)}, Extent{block},
                        static_cast<size_t>(smem), Nothing{});
    return at::empty({0}, opts);
  }
  TORCH_CHECK(kernel == "sum", "launch_self_test: unknown kernel '", kernel, "'");
  TORCH_CHECK(grid <= (1 << 20), "launch_self_test: grid too large for a test");
  at::Tensor out = at::empty({std::max<int64_t>(grid, 0)}, opts);
  EmuLauncher::launch("launch_self_test", Extent{grid}, Extent{block}, static_cast<size_t>(smem),
                      BlockSum{out.mutable_data_ptr<int64_t>()});
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fcn_kernels_emu, m) {
  m.def("_set_index32_limit(int limit) -> int", &set_index32_limit);
  m.def("_set_capturing(bool capturing) -> bool", &set_emu_capturing);
  m.def("_launch_self_test(int grid, int block, int smem, str kernel=\"sum\") -> Tensor",
        &launch_self_test);
}

}  // namespace fcn_kernels
