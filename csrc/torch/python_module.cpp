// The Python module diffaccel._C. Importing it loads the TORCH_LIBRARY
// registrations of this library; the few functions here describe the build
// for `python -m diffaccel info`. CMake builds the ops without this file.
#include <torch/extension.h>

#include "../cpu/kernels.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "diffaccel compiled ops (registered under torch.ops.diffaccel)";
  m.def("cpu_isa_level", &diffaccel::cpu::cpu_isa_level,
        "ISA level of the multiversioned CPU kernels on this CPU");
#ifdef DIFFACCEL_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
