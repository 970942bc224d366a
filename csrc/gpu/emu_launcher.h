// EmuLauncher: runs a kernel functor (gpu/launch.h) on the CPU, every (block, thread)
// of the same launch configuration, so the CUDA code paths are tested without a GPU.
// Blocks run in parallel (at::parallel_for); the threads of a block run one after the
// other, phase by phase. Included only by csrc/<op>/emu.cpp.
//
// It cannot see what only hardware shows: data races between threads, stream and
// graph-capture ordering, register/occupancy limits, timing.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <memory>
#include <typeinfo>

#include "gpu/launch.h"

namespace fcn_kernels {

bool& emu_capturing();  // test hook (gpu/state.cpp): pretend a CUDA graph is capturing
// Test hook (gpu/state.cpp): while on, every launch records its kernel type, so tests can
// check that a script (benches/gpu_smoke.py ops) runs every kernel of the binary.
bool& emu_recording();
void emu_record_launch(const std::type_info& kernel);

struct EmuLauncher {
  static constexpr bool kEmulated = true;
  struct Guard {
    explicit Guard(const at::Device&) {}
  };

  template <typename K>
  static void launch(const char* name, Dim grid, Dim block, size_t smem, const K& kernel) {
    check_launch(grid, block, smem, name);
    if (emu_recording()) emu_record_launch(typeid(K));
    const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
    const int64_t threads = int64_t(block.x) * block.y * block.z;
    const int64_t grain = std::max<int64_t>(1, 16384 / threads);
    at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      std::unique_ptr<char[]> shared(new char[smem > 0 ? smem : 1]);
      Thread t;
      t.grid = grid;
      t.block_dim = block;
      t.smem = shared.get();
      for (int64_t b = b0; b < b1; ++b) {
        t.block = {static_cast<uint32_t>(b % grid.x), static_cast<uint32_t>((b / grid.x) % grid.y),
                   static_cast<uint32_t>(b / (int64_t(grid.x) * grid.y))};
        for (int phase = 0; phase < PhasesOf<K>::value; ++phase) {
          t.phase = phase;
          for (uint32_t z = 0; z < block.z; ++z) {
            for (uint32_t y = 0; y < block.y; ++y) {
              for (uint32_t x = 0; x < block.x; ++x) {
                t.thread = {x, y, z};
                kernel(t);
              }
            }
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
