// State of the GPU host code that tests may change, and the fcn_kernels_emu test hooks.
#include <ATen/ops/empty.h>
#include <c10/util/Type.h>
#include <torch/library.h>

#include <limits>
#include <mutex>
#include <set>
#include <string>

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

std::mutex recorded_mutex;
std::set<std::string>& recorded() {
  static std::set<std::string> names;
  return names;
}

}  // namespace

bool& emu_recording() {
  static bool recording = false;
  return recording;
}

void emu_record_launch(const std::type_info& kernel) {
  std::lock_guard<std::mutex> lock(recorded_mutex);
  recorded().insert(c10::demangle(kernel.name()));
}

namespace {

// Turns launch recording on or off; returns the kernel types launched since the last
// call, one demangled name per line, and forgets them.
std::string record_launches(bool on) {
  std::lock_guard<std::mutex> lock(recorded_mutex);
  std::string out;
  for (const auto& name : recorded()) out += name + "\n";
  recorded().clear();
  emu_recording() = on;
  return out;
}

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

at::Tensor launch_self_test(int64_t grid, int64_t block, int64_t smem) {
  at::Tensor out = at::empty({std::max<int64_t>(grid, 0)}, at::TensorOptions().dtype(at::kLong));
  EmuLauncher::launch("launch_self_test", Dim{static_cast<uint32_t>(grid)},
                      Dim{static_cast<uint32_t>(block)}, static_cast<size_t>(smem),
                      BlockSum{out.mutable_data_ptr<int64_t>()});
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fcn_kernels_emu, m) {
  m.def("_set_index32_limit(int limit) -> int", &set_index32_limit);
  m.def("_set_capturing(bool capturing) -> bool", &set_emu_capturing);
  m.def("_launch_self_test(int grid, int block, int smem) -> Tensor", &launch_self_test);
  m.def("_record_launches(bool on) -> str", &record_launches);
}

}  // namespace fcn_kernels
