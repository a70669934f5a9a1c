// How the kernels see a tensor: a raw pointer and its element type, with no
// torch type, so csrc/cpu and csrc/cuda compile without torch headers.
// csrc/torch/ makes every tensor contiguous before the kernels see it: element
// i of sample b sits at b * per_sample + i.
#pragma once

namespace diffaccel {

enum class DType : int { kFloat16, kBFloat16, kFloat32, kFloat64 };

struct In {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
};

}  // namespace diffaccel
