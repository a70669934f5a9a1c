// Grid sizing shared by the CUDA launchers.
#include <cuda_runtime.h>

#include <algorithm>

#include "memory_access.cuh"

namespace diffaccel::cuda {

int grid_size(int64_t units) {
  // A few waves of resident blocks; the grid-stride loops cover the rest.
  // cudaDeviceGetAttribute is a host query, not a synchronization.
  int device = 0, multiprocessors = 132;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  }
  const int64_t wanted = (units + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(multiprocessors) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min(wanted, cap)));
}

}  // namespace diffaccel::cuda
