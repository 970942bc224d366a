// State of the GPU host code that tests may change, and the fcn_kernels_emu test hooks.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Type.h>
#include <torch/library.h>

#include <algorithm>
#include <iterator>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

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

// The launcher's own tests, one kernel of three phases (barriers between them) per mode:
// * sum:   a correct block reduction: phase 0 each thread stores its global index in
//          shared memory, phase 1 thread 0 sums them; out[b] = the sum;
// * raw:   the same with the barrier forgotten: the block's last thread sums in phase 0
//          (reads what other threads write in the same phase);
// * war:   phase 1 does s[i] += s[i + 1] in place: thread i reads a word that thread
//          i + 1 writes in the same phase; phase 2 thread 0 sums (out[b]);
// * waw:   every thread stores into s[0] in phase 0; phase 1 thread 0 copies it out;
// * uninit: sum's kernel, but the last thread stores nothing: thread 0 reads a word no
//          thread wrote (on a GPU whatever was there; in the emulator the 0xFF poison);
// * order: no shared memory: out[b, 1 + i] = the rank at which thread i ran (phase 0).
enum class SelfTest { kSum, kRaw, kWar, kWaw, kUninit, kOrder };

struct SelfTestKernel {
  static constexpr int kPhases = 3;
  SelfTest mode;
  int64_t* out;

  void operator()(const Thread& t) const {
    const int64_t n = t.block_dim.x, i = t.thread.x, b = t.block.x;
    if (mode == SelfTest::kOrder) {
      if (t.phase == 0) out[b * (n + 1) + 1 + i] = out[b * (n + 1)]++;
      return;
    }
    auto s = t.shared<int64_t>();
    const auto sum = [&] {
      int64_t acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += s[k];
      return acc;
    };
    if (t.phase == 0) {
      if (mode != SelfTest::kUninit || i != n - 1) s[mode == SelfTest::kWaw ? 0 : i] = b * n + i;
      if (mode == SelfTest::kRaw && i == n - 1) out[b] = sum();
    } else if (t.phase == 1) {
      if (mode == SelfTest::kWar && i + 1 < n) s[i] += s[i + 1];
      if ((mode == SelfTest::kSum || mode == SelfTest::kUninit) && i == 0) out[b] = sum();
      if (mode == SelfTest::kWaw && i == 0) out[b] = s[0];
    } else if (mode == SelfTest::kWar && i == 0) {
      out[b] = sum();
    }
  }
};

struct Nothing {
  void operator()(const Thread&) const {}
};

// Runs `grid` blocks of `block` threads of a self-test kernel (above) and returns out.
// kernel "elements": a launch of empty threads over `grid` elements, its grid sized by
// ceil_div as the ops' host code does (nothing is allocated, so oversized launches are
// testable); returns [].
at::Tensor launch_self_test(int64_t grid, int64_t block, int64_t smem, c10::string_view kernel) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  if (kernel == "elements") {
    TORCH_CHECK(block >= 1, "launch_self_test: block must be positive");
    EmuLauncher::launch("launch_self_test", Extent{ceil_div(grid, block)}, Extent{block},
                        static_cast<size_t>(smem), Nothing{});
    return at::empty({0}, opts);
  }
  static const std::pair<const char*, SelfTest> modes[] = {
      {"sum", SelfTest::kSum}, {"raw", SelfTest::kRaw},       {"war", SelfTest::kWar},
      {"waw", SelfTest::kWaw}, {"uninit", SelfTest::kUninit}, {"order", SelfTest::kOrder}};
  const auto m = std::find_if(std::begin(modes), std::end(modes),
                              [&](const auto& e) { return kernel == e.first; });
  TORCH_CHECK(m != std::end(modes), "launch_self_test: unknown kernel '", kernel, "'");
  TORCH_CHECK(grid <= (1 << 20) && block <= (1 << 20),
              "launch_self_test: grid or block too large for a test");
  // Every thread's word must fit in smem; too little is allowed under the racecheck, which
  // must then report the first access past the end (before it happens).
  TORCH_CHECK(m->second == SelfTest::kOrder || smem >= block * 8 || emu_options().racecheck,
              "launch_self_test: smem must hold block int64 words");
  const int64_t per_block = m->second == SelfTest::kOrder ? std::max<int64_t>(block, 0) + 1 : 1;
  at::Tensor out = at::zeros({std::max<int64_t>(grid, 0), per_block}, opts);
  EmuLauncher::launch("launch_self_test", Extent{grid}, Extent{block}, static_cast<size_t>(smem),
                      SelfTestKernel{m->second, out.mutable_data_ptr<int64_t>()});
  return m->second == SelfTest::kOrder ? out.narrow(1, 1, block) : out.view(-1);
}

bool set_racecheck(bool on) {
  const bool old = emu_options().racecheck;
  emu_options().racecheck = on;
  return old;
}

// order: 0 forward, 1 reverse, 2 shuffle (seeded). Returns the previous (order, seed).
std::vector<int64_t> set_thread_order(int64_t order, int64_t seed) {
  TORCH_CHECK_VALUE(order >= 0 && order <= 2, "thread order must be 0, 1 or 2, got ", order);
  EmuOptions& o = emu_options();
  std::vector<int64_t> old{static_cast<int64_t>(o.order), o.seed};
  o.order = static_cast<ThreadOrder>(order);
  o.seed = seed;
  return old;
}

std::string thread_name(const Dim& d, int32_t k) {
  const uint32_t x = k % d.x, y = (k / d.x) % d.y, z = k / (d.x * d.y);
  return "(" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}

}  // namespace

std::atomic<int64_t>& emu_launch_count() {
  static std::atomic<int64_t> count{0};
  return count;
}

EmuOptions& emu_options() {
  static EmuOptions options;
  return options;
}

void emu_thread_order(const EmuOptions& opt, int64_t b, int phase, std::vector<int32_t>& order) {
  std::iota(order.begin(), order.end(), 0);
  if (opt.order == ThreadOrder::kReverse) {
    std::reverse(order.begin(), order.end());
  } else if (opt.order == ThreadOrder::kShuffle) {
    std::seed_seq seq{opt.seed, b, int64_t(phase)};
    std::mt19937_64 rng(seq);
    std::shuffle(order.begin(), order.end(), rng);
  }
}

void smem_access(const Thread& t, const void* p, size_t bytes, bool write) {
  SmemCheck& c = *t.check;
  const Dim& bd = t.block_dim;
  const int32_t me = static_cast<int32_t>(t.thread.x + bd.x * (t.thread.y + bd.y * t.thread.z));
  const std::ptrdiff_t off = static_cast<const char*>(p) - t.smem;
  const auto where = [&] {
    return std::string(c.kernel) + ": block (" + std::to_string(t.block.x) + ", " +
           std::to_string(t.block.y) + ", " + std::to_string(t.block.z) + ") thread " +
           thread_name(bd, me) + " phase " + std::to_string(t.phase) + ": ";
  };
  TORCH_CHECK(off >= 0 && size_t(off) + bytes <= c.bytes, "racecheck: ", where(), bytes,
              "-byte shared-memory access at offset ", off, " outside the launch's ", c.bytes,
              " bytes");
  for (size_t i = size_t(off); i < size_t(off) + bytes; ++i) {
    int32_t other = -1;
    const char* hazard = nullptr;
    if (c.writer[i] >= 0 && c.writer[i] != me) {
      other = c.writer[i];
      hazard = write ? "write after write" : "read after write";
    } else if (write && c.reader1[i] >= 0 && c.reader1[i] != me) {
      other = c.reader1[i];
      hazard = "write after read";
    } else if (write && c.reader2[i] >= 0) {  // reader2 is never reader1
      other = c.reader2[i];
      hazard = "write after read";
    }
    TORCH_CHECK(write || c.written[i], "racecheck: ", where(), "reads shared-memory byte ", i,
                " that no thread of this block has written (undefined on a GPU)");
    TORCH_CHECK(hazard == nullptr, "racecheck: ", where(), hazard, " hazard on shared-memory byte ",
                i, " (", write ? "written" : "read", " here, accessed by thread ",
                thread_name(bd, other), " in the same phase with no barrier between)");
    if (write) {
      c.writer[i] = me;
      c.written[i] = true;
    } else if (c.reader1[i] < 0) {
      c.reader1[i] = me;
    } else if (c.reader1[i] != me && c.reader2[i] < 0) {
      c.reader2[i] = me;
    }
  }
}

TORCH_LIBRARY_FRAGMENT(fcn_kernels_emu, m) {
  m.def("_set_index32_limit(int limit) -> int", &set_index32_limit);
  m.def("_set_capturing(bool capturing) -> bool", &set_emu_capturing);
  m.def("_launch_self_test(int grid, int block, int smem, str kernel=\"sum\") -> Tensor",
        &launch_self_test);
  m.def("_set_racecheck(bool on) -> bool", &set_racecheck);
  m.def("_launch_count() -> int", [] { return emu_launch_count().load(); });
  m.def("_set_thread_order(int order, int seed) -> int[]", &set_thread_order);
  m.def("_record_launches(bool on) -> str", &record_launches);
}

}  // namespace fcn_kernels
