// EmuLauncher: runs a kernel functor (gpu/launch.h) on the CPU, every (block, thread)
// of the same launch configuration, so the CUDA code paths are tested without a GPU.
// Blocks run in parallel (at::parallel_for); the threads of a block run one after the
// other, phase by phase: in thread-index order, or (fcn_kernels.testing.thread_order)
// reversed or shuffled, so that results depending on the order show up. With the
// racecheck on (fcn_kernels.testing.racecheck) every shared-memory access through
// t.shared<T>() is recorded per byte and phase, and a conflicting access by another
// thread of the same phase raises. Included only by csrc/<op>/emu.cpp.
//
// It cannot see what only hardware shows: races through global memory, stream and
// graph-capture ordering, register/occupancy limits, timing.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <typeinfo>
#include <vector>

#include "gpu/launch.h"

namespace fcn_kernels {

bool& emu_capturing();  // test hook (gpu/state.cpp): pretend a CUDA graph is capturing
// Test hook (gpu/state.cpp): while on, every launch records its kernel type, so tests can
// check that a script (benches/gpu_smoke.py ops) runs every kernel of the binary.
bool& emu_recording();
void emu_record_launch(const std::type_info& kernel);

enum class ThreadOrder { kForward = 0, kReverse = 1, kShuffle = 2 };

// Test settings of the emulator (gpu/state.cpp), read once per launch.
struct EmuOptions {
  bool racecheck = false;
  ThreadOrder order = ThreadOrder::kForward;
  int64_t seed = 0;
};
EmuOptions& emu_options();

// Launches run by the emulator so far (tests count a host side's launches with it).
std::atomic<int64_t>& emu_launch_count();

// Per byte of a block's shared memory, in the current phase: the thread that wrote it
// and up to two distinct threads that read it (-1: none), as linear thread indices; and
// whether any thread of the block has written it yet (a GPU's shared memory starts with
// whatever the previous block left there, so reading an unwritten byte is an error).
struct SmemCheck {
  const char* kernel;
  Dim block;
  size_t bytes;
  std::vector<int32_t> writer, reader1, reader2;
  std::vector<bool> written;

  SmemCheck(const char* name, size_t n)
      : kernel(name), bytes(n), writer(n), reader1(n), reader2(n), written(n) {}
  void new_block(const Dim& b) {
    block = b;
    std::fill(written.begin(), written.end(), false);
  }
  void new_phase() {
    std::fill(writer.begin(), writer.end(), -1);
    std::fill(reader1.begin(), reader1.end(), -1);
    std::fill(reader2.begin(), reader2.end(), -1);
  }
};

// The order in which the threads of block b run phase `phase` (linear thread indices).
void emu_thread_order(const EmuOptions& opt, int64_t b, int phase, std::vector<int32_t>& order);

struct EmuLauncher {
  static constexpr bool kEmulated = true;
  struct Guard {
    explicit Guard(const at::Device&) {}
  };

  template <typename K>
  static void launch(const char* name, const Extent& grid_size, const Extent& block_size,
                     size_t smem, const K& kernel) {
    const auto dims = check_launch(grid_size, block_size, smem, name);
    const Dim grid = dims.first, block = dims.second;
    // One profiler event per launch, named as the launch (what a GPU profile shows as a
    // kernel): benches/gpu_smoke.py's cost check counts them in the rehearsal.
    RECORD_USER_SCOPE(name);
    const EmuOptions opt = emu_options();
    emu_launch_count().fetch_add(1, std::memory_order_relaxed);
    if (emu_recording()) emu_record_launch(typeid(K));
    const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
    const int32_t threads = static_cast<int32_t>(int64_t(block.x) * block.y * block.z);
    const int64_t grain = std::max<int64_t>(1, 16384 / threads);
    at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      std::unique_ptr<char[]> shared(new char[smem > 0 ? smem : 1]);
      std::unique_ptr<SmemCheck> check;
      if (opt.racecheck && smem > 0) check = std::make_unique<SmemCheck>(name, smem);
      std::vector<int32_t> order(threads);
      Thread t;
      t.grid = grid;
      t.block_dim = block;
      t.smem = shared.get();
      t.check = check.get();
      for (int64_t b = b0; b < b1; ++b) {
        t.block = {static_cast<uint32_t>(b % grid.x), static_cast<uint32_t>((b / grid.x) % grid.y),
                   static_cast<uint32_t>(b / (int64_t(grid.x) * grid.y))};
        if (check) check->new_block(t.block);
        // Poison, so that a read of shared memory nobody wrote gives NaN (float) or -1
        // (int) in every run, as undefined as it is on a GPU, not a lucky zero.
        if (smem > 0) std::memset(shared.get(), 0xFF, smem);
        for (int phase = 0; phase < PhasesOf<K>::value; ++phase) {
          t.phase = phase;
          if (check) check->new_phase();
          emu_thread_order(opt, b, phase, order);
          for (const int32_t k : order) {
            t.thread = {static_cast<uint32_t>(k % block.x),
                        static_cast<uint32_t>((k / block.x) % block.y),
                        static_cast<uint32_t>(k / (block.x * block.y))};
            kernel(t);
          }
        }
      }
    });
  }

  static int sm_count() { return 132; }  // an H100/H200, so grids match theirs
  static bool capturing() { return emu_capturing(); }
  static int64_t stream_key() { return 0; }
};

}  // namespace fcn_kernels
