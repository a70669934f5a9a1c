// Grid and scratch sizing shared by the CUDA launchers.
#include <cuda_runtime.h>

#include <algorithm>

#include "chunked_reduction.cuh"
#include "launchers.h"
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

int64_t reduction_scratch_bytes(int64_t batch, int64_t per_sample) {
  return 16 + round16(batch * reduction_chunks(per_sample) * int64_t(sizeof(double)));
}

}  // namespace diffaccel::cuda
