// CudaLauncher: runs a kernel functor (gpu/launch.h) as a real CUDA kernel on the
// current stream. Included only by csrc/<op>/cuda.cu.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <atomic>

#include "gpu/launch.h"

namespace fcn_kernels {

template <typename K>
__global__ void fk_kernel(const K kernel) {
  extern __shared__ __align__(16) char fk_smem[];
  Thread t;
  t.block = {blockIdx.x, blockIdx.y, blockIdx.z};
  t.thread = {threadIdx.x, threadIdx.y, threadIdx.z};
  t.grid = {gridDim.x, gridDim.y, gridDim.z};
  t.block_dim = {blockDim.x, blockDim.y, blockDim.z};
  t.smem = fk_smem;
#pragma unroll 1
  for (int phase = 0; phase < PhasesOf<K>::value; ++phase) {
    if (phase > 0) __syncthreads();
    t.phase = phase;
    kernel(t);
  }
}

struct CudaLauncher {
  static constexpr bool kEmulated = false;
  using Guard = c10::cuda::CUDAGuard;

  template <typename K>
  static void launch(const char* name, const Extent& grid_size, const Extent& block_size,
                     size_t smem, const K& kernel) {
    const auto dims = check_launch(grid_size, block_size, smem, name);
    const Dim grid = dims.first, block = dims.second;
    fk_kernel<K><<<dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), smem,
                   c10::cuda::getCurrentCUDAStream()>>>(kernel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Multiprocessors of the current device (grid sizing for persistent loops), queried
  // once per device index: a device attribute query per launch costs host time.
  static int sm_count() {
    static std::atomic<int> cached[kCachedDevices] = {};
    int device = 0, count = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    const bool cacheable = device >= 0 && device < kCachedDevices;
    if (cacheable && (count = cached[device].load(std::memory_order_relaxed)) > 0) return count;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    // Racing first calls store the same value.
    if (cacheable) cached[device].store(count, std::memory_order_relaxed);
    return count;
  }
  static constexpr int kCachedDevices = 64;

  // Identifies the current stream (results computed on it may be reused there).
  static int64_t stream_key() { return c10::cuda::getCurrentCUDAStream().id(); }

  // True while the current stream is being captured into a CUDA graph: no host sync
  // (item(), a blocking copy) is allowed then.
  static bool capturing() {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
    return status != cudaStreamCaptureStatusNone;
  }
};

}  // namespace fcn_kernels
