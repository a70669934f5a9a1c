// The Python module diffaccel._C. Importing it loads the TORCH_LIBRARY
// registrations of this library; the few functions here describe the build
// for `python -m diffaccel info`, and philox_normal recomputes on the CPU the
// noise the CUDA kernels draw in place. CMake builds the ops without this file.
#include <torch/extension.h>

#include "../cpu/kernels.h"
#include "diffaccel/philox.h"

namespace {

// Elements [0, n) of the in-kernel normal stream (seed, offset), in float32
// (float32 and 16-bit states) or float64 (float64 states), as the CUDA
// kernels compute them (the last bits may differ: the device's log, sin and
// cos round differently from the host's).
at::Tensor philox_normal(uint64_t seed, uint64_t offset, int64_t n, bool float64) {
  TORCH_CHECK_VALUE(n >= 0, "philox_normal: argument 'n' must be >= 0, got ", n);
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(float64 ? at::kDouble : at::kFloat));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_normal", [&] {
    scalar_t* z = out.data_ptr<scalar_t>();
    at::parallel_for(0, (n + 3) / 4, 1024, [&](int64_t b0, int64_t b1) {
      for (int64_t block = b0; block < b1; ++block) {
        scalar_t four[4];
        diffaccel::philox_normal4<scalar_t>(seed, offset, uint64_t(block), four);
        for (int e = 0; e < 4 && 4 * block + e < n; ++e) z[4 * block + e] = four[e];
      }
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "diffaccel compiled ops (registered under torch.ops.diffaccel)";
  m.def("cpu_isa_level", &diffaccel::cpu::cpu_isa_level, "ISA level of the multiversioned CPU kernels on this CPU");
  m.def("philox_normal", &philox_normal, py::arg("seed"), py::arg("offset"), py::arg("n"), py::arg("float64") = false,
        "The first n normals of the in-kernel Philox stream (seed, offset) of the CUDA kernels");
  m.def(
      "philox4x32_10",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        const diffaccel::Philox4 r = diffaccel::philox4x32_10(diffaccel::Philox4{{c0, c1, c2, c3}}, k0, k1);
        return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      "One Philox4x32-10 block (for known-answer tests)");
#ifdef DIFFACCEL_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
