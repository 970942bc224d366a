// How the CPU kernels split their loops into tasks, and the layout dispatch of their row
// loops. One rule for every operator:
//
// * A task gets at least kTaskWork units of work, a unit being one element read through
//   one tap (about one multiply-add) or one element moved. Smaller tasks spend more on
//   scheduling than they compute. at::parallel_for never makes more tasks than threads,
//   so the grain only decides how many threads a small problem uses.
// * Loops that cut their own chunks (to reuse data within a chunk) size them by the
//   same rule but keep at least kTasksPerThread chunks per thread, so that an uneven
//   split still keeps every thread busy.
//
// No result depends on the split: every output element is computed by one task in a
// fixed order.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fcn_kernels {

constexpr int64_t kTaskWork = 32768;
constexpr int64_t kTasksPerThread = 4;

// at::parallel_for grain for items of `work_per_item` units each.
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, work_per_item));
}

// Items per self-cut chunk, for `outer` independent ranges of `items` items each:
// grain(work_per_item), shrunk until there are kTasksPerThread chunks per thread.
inline int64_t items_per_chunk(int64_t outer, int64_t items, int64_t work_per_item) {
  int64_t n = grain(work_per_item);
  const int64_t want = kTasksPerThread * at::get_num_threads();
  if (outer * ((items + n - 1) / n) < want) n = std::max<int64_t>(1, outer * items / want);
  return n;
}

// Layout dispatch of the (P, H, W, V) row loops (common/tensor.h): f(kPlanarVec) for NCHW
// (V == 1), f(V) (an int64_t) for channels_last. The loops take V as a template type
// `Vec`; for NCHW it is the constant 1 and the compiler drops the channel loop.
using PlanarVec = std::integral_constant<int64_t, 1>;
constexpr PlanarVec kPlanarVec{};

template <typename F>
void with_vec(int64_t V, F&& f) {
  if (V == 1) {
    f(kPlanarVec);
  } else {
    f(V);
  }
}

}  // namespace fcn_kernels
