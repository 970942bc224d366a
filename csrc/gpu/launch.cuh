// Launch helpers shared by the CUDA kernels (grid-stride loops, 32/64-bit indexing).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>

namespace fcn_kernels {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;

// Grid-stride loops: cap the grid, every thread still covers its share.
inline int grid_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks));
}

// True when 32-bit index math is safe for loops over these element counts: every
// offset fits, and so does a grid-stride step past the last element (i + grid size).
inline bool fits_int32(std::initializer_list<int64_t> numels) {
  constexpr int64_t lim = std::numeric_limits<int32_t>::max() - kMaxBlocks * kThreads;
  for (int64_t n : numels) {
    if (n >= lim) return false;
  }
  return true;
}

}  // namespace fcn_kernels
