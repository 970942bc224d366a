// The launcher interface every GPU kernel of this package is written against.
//
// A kernel is a functor with a per-thread body, `FK_HD void operator()(const Thread&)
// const`, that gets its block and thread coordinates from the Thread argument instead of
// CUDA's builtins. Each operator's host side (csrc/<op>/gpu.h) is a template on a
// launcher L and is compiled twice:
// * with CudaLauncher (gpu/cuda_launcher.cuh, in csrc/<op>/cuda.cu): a real
//   <<<grid, block, smem, stream>>> launch on the current stream;
// * with EmuLauncher (gpu/emu_launcher.h, in csrc/<op>/emu.cpp): the host compiler runs
//   the same body for every (block, thread) of the same launch on the CPU, blocks
//   spread over at::parallel_for. These are the torch.ops.fcn_kernels_emu operators.
// A kernel that needs __syncthreads declares `static constexpr int kPhases = n`; its
// body then runs n times per thread with t.phase = 0 .. n-1 and a block-wide barrier
// between phases (the emulator runs each phase for all of a block's threads before the
// next), sharing data only through t.shared<T>() (dynamic shared memory, zero-filled
// by neither launcher; the emulator fills it with 0xFF bytes, NaN as floats). Under the emulator's
// racecheck (fcn_kernels.testing.racecheck()) every access through it is recorded, and a byte one
// thread wrote that another thread reads or writes in the same phase (or one read that another
// writes) raises.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "common/tensor.h"

namespace fcn_kernels {

struct Dim {
  uint32_t x = 1, y = 1, z = 1;
};

struct SmemCheck;  // the emulator's racecheck state (gpu/emu_launcher.h)
template <typename T>
struct SharedArray;

struct Thread {
  Dim block;                   // blockIdx
  Dim thread;                  // threadIdx
  Dim grid;                    // gridDim
  Dim block_dim;               // blockDim
  int phase;                   // 0 .. K::kPhases-1
  char* smem;                  // the block's dynamic shared memory (raw: not checked)
  SmemCheck* check = nullptr;  // emulated racecheck on: accesses are recorded

  // The block's dynamic shared memory as an array of T (the checked view).
  template <typename T>
  FK_HD SharedArray<T> shared() const;
};

// Records an access of `bytes` bytes at p by thread t for the racecheck, raising on a
// conflict (gpu/state.cpp; host only).
void smem_access(const Thread& t, const void* p, size_t bytes, bool write);

// An element of shared memory. On the GPU a plain load or store once inlined (the
// check branch is compiled out); in emulation it tells the racecheck first.
template <typename T>
struct SharedRef {
  T* p;
  const Thread* t;

  FK_HD SharedRef(T* p_, const Thread* t_) : p(p_), t(t_) {}
  SharedRef(const SharedRef&) = default;

  FK_HD operator T() const {
    note(false);
    return *p;
  }
  FK_HD SharedRef& operator=(T v) {
    note(true);
    *p = v;
    return *this;
  }
  FK_HD SharedRef& operator=(const SharedRef& other) { return *this = T(other); }
  FK_HD SharedRef& operator+=(T v) { return *this = T(*this) + v; }  // a read, then a write
  FK_HD SharedRef& operator|=(T v) { return *this = T(*this) | v; }

  FK_HD void note(bool write) const {
#ifndef __CUDA_ARCH__
    if (t->check != nullptr) smem_access(*t, p, sizeof(T), write);
#endif
  }
};

template <typename T>
struct SharedArray {
  T* p;
  const Thread* t;
  template <typename I>
  FK_HD SharedRef<T> operator[](I i) const {
    return {p + i, t};
  }
  template <typename I>
  FK_HD SharedArray operator+(I i) const {  // a row of it, still checked
    return {p + i, t};
  }
};

template <typename T>
FK_HD SharedArray<T> Thread::shared() const {
  return {reinterpret_cast<T*>(smem), this};
}

template <typename K, typename = void>
struct PhasesOf : std::integral_constant<int, 1> {};
template <typename K>
struct PhasesOf<K, std::void_t<decltype(K::kPhases)>> : std::integral_constant<int, K::kPhases> {};

// CUDA's launch limits, enforced by the emulator too so that an invalid launch fails
// in CI exactly as it would on a GPU ("invalid configuration argument").
constexpr int64_t kMaxThreadsPerBlock = 1024;
constexpr int64_t kMaxGridX = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxSharedBytes = 48 * 1024;  // without cudaFuncSetAttribute

// Host-side launch extents, in 64 bits: grid sizes are computed and checked against
// CUDA's limits here before they are narrowed to the 32-bit dims a launch takes, so an
// oversized launch raises instead of running a truncated grid.
struct Extent {
  int64_t x = 1, y = 1, z = 1;
  constexpr Extent() = default;
  constexpr Extent(int64_t x_, int64_t y_ = 1, int64_t z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr Extent(const Dim& d) : x(d.x), y(d.y), z(d.z) {}
};

// Validates a launch (a TORCH_CHECK error naming the kernel otherwise) and returns its
// grid and block as launch dims.
inline std::pair<Dim, Dim> check_launch(const Extent& grid, const Extent& block, size_t smem,
                                        const char* name) {
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= kMaxGridX &&
                  grid.y <= kMaxGridYZ && grid.z <= kMaxGridYZ,
              name, ": invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(block.x >= 1 && block.y >= 1 && block.z >= 1 && block.x <= kMaxThreadsPerBlock &&
                  block.y <= kMaxThreadsPerBlock && block.z <= 64 &&
                  block.x * block.y * block.z <= kMaxThreadsPerBlock,
              name, ": invalid block (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(smem <= static_cast<size_t>(kMaxSharedBytes), name, ": ", smem,
              " bytes of shared memory exceed the default limit");
  auto dim = [](const Extent& e) {
    return Dim{static_cast<uint32_t>(e.x), static_cast<uint32_t>(e.y), static_cast<uint32_t>(e.z)};
  };
  return {dim(grid), dim(block)};
}

// ---------------------------------------------------------------------------
// 32/64-bit index choice, shared by every host side. The limit can be lowered for
// tests (torch.ops.fcn_kernels_emu._set_index32_limit) so the int64 kernels run on
// small tensors.
// ---------------------------------------------------------------------------
int64_t& index32_limit();  // defined in gpu/state.cpp

// True when every offset in tensors of these element counts fits in int32 with room
// for one more block's worth of threads past the end.
inline bool fits_int32(std::initializer_list<int64_t> numels) {
  const int64_t lim = index32_limit();
  for (int64_t n : numels) {
    if (n >= lim) return false;
  }
  return true;
}

// 1 + the largest element offset a tensor's strides reach (its numel when dense, less when
// expanded; 0 when empty): what index arithmetic over a strided tensor must cover.
inline int64_t element_span(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t s = 1;
  for (int64_t a = 0; a < t.dim(); ++a) s += (t.size(a) - 1) * t.stride(a);
  return s;
}

template <typename F>
void with_index_type(bool small, F&& f) {
  if (small) {
    f(int32_t(0));
  } else {
    f(int64_t(0));
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// For call sites that build a Dim: a quotient that does not fit raises here (it would
// otherwise wrap into a small, valid-looking grid). New code passes Extent{ceil_div()}.
inline uint32_t ceil_div_u32(int64_t a, int64_t b) {
  const int64_t q = ceil_div(a, b);
  TORCH_CHECK(q >= 0 && q <= int64_t(UINT32_MAX), "launch dimension ", q, " exceeds 2^32 - 1");
  return static_cast<uint32_t>(q);
}

// ---------------------------------------------------------------------------
// Device-side helpers with a serial/host equivalent.
// ---------------------------------------------------------------------------
FK_HD int atomic_max(int* addr, int v) {
#ifdef __CUDA_ARCH__
  return atomicMax(addr, v);
#else
  int old = __atomic_load_n(addr, __ATOMIC_RELAXED);
  while (old < v &&
         !__atomic_compare_exchange_n(addr, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
#endif
}

FK_HD long long atomic_max(long long* addr, long long v) {
#ifdef __CUDA_ARCH__
  return atomicMax(addr, v);
#else
  long long old = __atomic_load_n(addr, __ATOMIC_RELAXED);
  while (old < v &&
         !__atomic_compare_exchange_n(addr, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
#endif
}

// A flag many threads may raise: a plain store of 1 (racing writers agree).
FK_HD void raise_flag(int* flag) {
  if (flag == nullptr) return;
#ifdef __CUDA_ARCH__
  *flag = 1;
#else
  __atomic_store_n(flag, 1, __ATOMIC_RELAXED);
#endif
}

}  // namespace fcn_kernels
