// The Python module diffaccel._C. Importing it loads the TORCH_LIBRARY
// registrations of this library; the few functions here describe the build
// for `python -m diffaccel info`, philox_normal recomputes on the CPU the
// noise the CUDA kernels draw in place, and below_autograd holds the ops'
// unboxed entry points below the autograd key. CMake builds the ops without
// this file.
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../cpu/kernels.h"
#include "../cpu/selection.h"
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

// The op `name` called with the dispatch key of its tensors' device (CPU or
// CUDA), as torch.ops.diffaccel.<name>.default.redispatch(keys, ...) does, but
// unboxed: the arguments go to the kernel as C++ values instead of through a
// stack of IValues, which saves about 1 us of the 2.5 us a small call takes
// on the dev VM. diffaccel.ops takes this path only where the dispatcher has
// nothing else to do (no autograd recording, torch.compile, functorch
// transform, dispatch mode or tensor subclass).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

template <typename Signature, typename... Args>
auto below_autograd(const c10::TypedOperatorHandle<Signature>& op, const at::Tensor& device_of, Args&&... args) {
  const c10::DispatchKey key = device_of.is_cuda() ? c10::DispatchKey::CUDA : c10::DispatchKey::CPU;
  return op.redispatch(c10::DispatchKeySet(key), std::forward<Args>(args)...);
}

// What the dispatcher's ADInplaceOrView step does for an in-place write, which
// a call below it skips: bump the version counter of each output, so that
// autograd notices when a tensor it saved was overwritten. (Inference tensors
// have no version counter.)
template <typename... Tensors>
void bump_versions(const Tensors&... outs) {
  for (const at::Tensor* t : {&outs...}) {
    if (!t->is_inference()) t->unsafeGetTensorImpl()->bump_version();
  }
}

using OptionalTensor = const std::optional<at::Tensor>&;
using Tensors = std::vector<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> ei_step(const at::Tensor& x, const at::Tensor& model_out, const Tensors& history,
                                           const at::Tensor& coeffs, OptionalTensor noise,
                                           std::optional<std::string_view> threshold_kind, double threshold_ratio,
                                           double threshold_max_value, std::string_view threshold_style) {
  using Sig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, at::TensorList,
                                                 const at::Tensor&, OptionalTensor, std::optional<std::string_view>,
                                                 double, double, std::string_view);
  static const auto op = find_op<Sig>("diffaccel::ei_step");
  return below_autograd(op, x, x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio,
                        threshold_max_value, threshold_style);
}

void ei_step_out(const at::Tensor& x, const at::Tensor& model_out, const Tensors& history, const at::Tensor& coeffs,
                 OptionalTensor noise, std::optional<std::string_view> threshold_kind, double threshold_ratio,
                 double threshold_max_value, std::string_view threshold_style, const at::Tensor& x_next_out,
                 const at::Tensor& d_out) {
  using Sig =
      void(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&, OptionalTensor,
           std::optional<std::string_view>, double, double, std::string_view, const at::Tensor&, const at::Tensor&);
  static const auto op = find_op<Sig>("diffaccel::ei_step_out");
  below_autograd(op, x, x, model_out, history, coeffs, noise, threshold_kind, threshold_ratio, threshold_max_value,
                 threshold_style, x_next_out, d_out);
  bump_versions(x_next_out, d_out);
}

at::Tensor multistep_combine(const Tensors& tensors, const at::Tensor& coeffs) {
  using Sig = at::Tensor(at::TensorList, const at::Tensor&);
  static const auto op = find_op<Sig>("diffaccel::multistep_combine");
  return below_autograd(op, tensors.at(0), tensors, coeffs);
}

void multistep_combine_out(const Tensors& tensors, const at::Tensor& coeffs, const at::Tensor& out) {
  using Sig = void(at::TensorList, const at::Tensor&, const at::Tensor&);
  static const auto op = find_op<Sig>("diffaccel::multistep_combine_out");
  below_autograd(op, tensors.at(0), tensors, coeffs, out);
  bump_versions(out);
}

std::tuple<at::Tensor, at::Tensor> multistep_combine_pair(const Tensors& tensors, const at::Tensor& coeffs) {
  using Sig = std::tuple<at::Tensor, at::Tensor>(at::TensorList, const at::Tensor&);
  static const auto op = find_op<Sig>("diffaccel::multistep_combine_pair");
  return below_autograd(op, tensors.at(0), tensors, coeffs);
}

void multistep_combine_pair_out(const Tensors& tensors, const at::Tensor& coeffs, const at::Tensor& y0_out,
                                const at::Tensor& y1_out) {
  using Sig = void(at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&);
  static const auto op = find_op<Sig>("diffaccel::multistep_combine_pair_out");
  below_autograd(op, tensors.at(0), tensors, coeffs, y0_out, y1_out);
  bump_versions(y0_out, y1_out);
}

at::Tensor threshold(const at::Tensor& x, std::string_view kind, double ratio, double max_value,
                     std::string_view style) {
  using Sig = at::Tensor(const at::Tensor&, std::string_view, double, double, std::string_view);
  static const auto op = find_op<Sig>("diffaccel::threshold");
  return below_autograd(op, x, x, kind, ratio, max_value, style);
}

void threshold_out(const at::Tensor& x, std::string_view kind, double ratio, double max_value, std::string_view style,
                   const at::Tensor& out) {
  using Sig = void(const at::Tensor&, std::string_view, double, double, std::string_view, const at::Tensor&);
  static const auto op = find_op<Sig>("diffaccel::threshold_out");
  below_autograd(op, x, x, kind, ratio, max_value, style, out);
  bump_versions(out);
}

std::tuple<at::Tensor, at::Tensor> langevin_correct(const at::Tensor& x, const at::Tensor& score, double snr,
                                                    const at::Tensor& alpha, OptionalTensor noise,
                                                    std::optional<at::Generator> generator,
                                                    std::string_view reduction) {
  using Sig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, const at::Tensor&,
                                                 OptionalTensor, std::optional<at::Generator>, std::string_view);
  static const auto op = find_op<Sig>("diffaccel::langevin_correct");
  return below_autograd(op, x, x, score, snr, alpha, noise, std::move(generator), reduction);
}

void langevin_correct_out(const at::Tensor& x, const at::Tensor& score, double snr, const at::Tensor& alpha,
                          OptionalTensor noise, std::optional<at::Generator> generator, std::string_view reduction,
                          const at::Tensor& x_new_out, const at::Tensor& x_mean_out) {
  using Sig = void(const at::Tensor&, const at::Tensor&, double, const at::Tensor&, OptionalTensor,
                   std::optional<at::Generator>, std::string_view, const at::Tensor&, const at::Tensor&);
  static const auto op = find_op<Sig>("diffaccel::langevin_correct_out");
  below_autograd(op, x, x, score, snr, alpha, noise, std::move(generator), reduction, x_new_out, x_mean_out);
  bump_versions(x_new_out, x_mean_out);
}

at::Tensor error_norm(const at::Tensor& x_high, const at::Tensor& x_low, const at::Tensor& x_prev, double atol,
                      double rtol) {
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double);
  static const auto op = find_op<Sig>("diffaccel::error_norm");
  return below_autograd(op, x_high, x_high, x_low, x_prev, atol, rtol);
}

// The same entry points behind the checks diffaccel.ops._call made in Python
// before taking them (about 1 us of a call on the dev VM, more after a pass
// over a large tensor has evicted the interpreter's data from the cache):
// they run the op where the dispatcher has nothing to do above its kernel (no
// autograd recording, functorch transform or dispatch mode), and otherwise
// return NotImplemented, for the caller to go through the dispatcher. (The
// Python side still checks the tensor subclass and torch.compile.)
bool records_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool records_grad(const std::optional<at::Tensor>& t) { return t && records_grad(*t); }
bool records_grad(const Tensors& ts) {
  for (const at::Tensor& t : ts) {
    if (records_grad(t)) return true;
  }
  return false;
}
template <typename T>
bool records_grad(const T&) {
  return false;
}

template <typename... Args>
bool dispatcher_has_work(const Args&... args) {
  const c10::DispatchKeySet included = c10::impl::tls_local_dispatch_key_set().included_;
  return (at::GradMode::is_enabled() && (records_grad(args) || ...)) ||
         included.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
         included.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode) ||
         c10::impl::TorchDispatchModeTLS::stack_len() > 0;
}

template <auto Entry>
struct Guarded;
template <typename Result, typename... Args, Result (*Entry)(Args...)>
struct Guarded<Entry> {
  static py::object call(Args... args) {
    if (dispatcher_has_work(args...)) return py::reinterpret_borrow<py::object>(Py_NotImplemented);
    if constexpr (std::is_void_v<Result>) {
      Entry(args...);
      return py::none();
    } else {
      return py::cast(Entry(args...));
    }
  }
};

// Test hook: the selection's tally (csrc/cpu/tally.cpp) of the magnitudes of
// `values` (1-d, contiguous, float32 or float64), fed in blocks of `block`
// elements to the version of `level`: (below, count, nan, stored candidates),
// or None where this CPU or build has no such version. With `model_out` (like
// values), the tally is over ei_step's data term c_x * values + c_m *
// model_out, computed in the tally's own loop.
py::object tally(const std::string& level, const at::Tensor& values, double lo, double hi, int64_t capacity,
                 int64_t block, const std::optional<at::Tensor>& model_out, double c_x, double c_m) {
  TORCH_CHECK_VALUE(values.dim() == 1 && values.is_contiguous() && values.device().is_cpu(),
                    "tally: argument 'values' must be a contiguous 1-d CPU tensor");
  TORCH_CHECK_VALUE(!model_out || (model_out->sizes() == values.sizes() && model_out->is_contiguous() &&
                                   model_out->device().is_cpu() && model_out->scalar_type() == values.scalar_type()),
                    "tally: argument 'model_out' must be a contiguous CPU tensor like 'values'");
  TORCH_CHECK_VALUE(block >= 1 && capacity >= 0, "tally: argument 'block' must be >= 1 and 'capacity' >= 0");
  py::object result = py::none();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "tally", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    const scalar_t* m = model_out ? model_out->data_ptr<scalar_t>() : nullptr;
    const int64_t n = values.numel();
    std::vector<scalar_t> stored(capacity + diffaccel::cpu::kTallySlack);
    diffaccel::cpu::Tally<scalar_t> t;
    t.candidates = stored.data();
    t.capacity = capacity;
    const diffaccel::cpu::Bracket<scalar_t> b{scalar_t(lo), scalar_t(hi), capacity};
    const scalar_t row[2] = {scalar_t(c_x), scalar_t(c_m)};
    for (int64_t offset = 0; offset < n; offset += block) {
      const int64_t len = std::min(block, n - offset);
      const bool ran = m == nullptr
                           ? diffaccel::cpu::tally_block_by(level, v + offset, len, b, t)
                           : diffaccel::cpu::tally_block_by(
                                 level, diffaccel::cpu::DataTerm<scalar_t>{v + offset, m + offset, row}, len, b, t);
      if (!ran) return;
    }
    stored.resize(std::min(t.count, capacity));
    result = py::make_tuple(t.below, t.count, t.nan, at::tensor(stored, values.options()));
  });
  return result;
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
  py::module_ below = m.def_submodule("below_autograd", "The ops' kernels for their tensors' device, unboxed");
  below.def("ei_step", &ei_step);
  below.def("ei_step_out", &ei_step_out);
  below.def("multistep_combine", &multistep_combine);
  below.def("multistep_combine_out", &multistep_combine_out);
  below.def("multistep_combine_pair", &multistep_combine_pair);
  below.def("multistep_combine_pair_out", &multistep_combine_pair_out);
  below.def("threshold", &threshold);
  below.def("threshold_out", &threshold_out);
  below.def("langevin_correct", &langevin_correct);
  below.def("langevin_correct_out", &langevin_correct_out);
  below.def("error_norm", &error_norm);
  py::module_ guarded =
      m.def_submodule("guarded", "below_autograd's entry points, or NotImplemented where the dispatcher has work");
  guarded.def("ei_step", &Guarded<&ei_step>::call);
  guarded.def("ei_step_out", &Guarded<&ei_step_out>::call);
  guarded.def("multistep_combine", &Guarded<&multistep_combine>::call);
  guarded.def("multistep_combine_out", &Guarded<&multistep_combine_out>::call);
  guarded.def("multistep_combine_pair", &Guarded<&multistep_combine_pair>::call);
  guarded.def("multistep_combine_pair_out", &Guarded<&multistep_combine_pair_out>::call);
  guarded.def("threshold", &Guarded<&threshold>::call);
  guarded.def("threshold_out", &Guarded<&threshold_out>::call);
  guarded.def("langevin_correct", &Guarded<&langevin_correct>::call);
  guarded.def("langevin_correct_out", &Guarded<&langevin_correct_out>::call);
  guarded.def("error_norm", &Guarded<&error_norm>::call);
  m.def("tally", &tally, py::arg("level"), py::arg("values"), py::arg("lo"), py::arg("hi"), py::arg("capacity"),
        py::arg("block"), py::arg("model_out") = py::none(), py::arg("c_x") = 0.0, py::arg("c_m") = 0.0,
        "The dynamic threshold's selection tally by one ISA level's version (for tests)");
#ifdef DIFFACCEL_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
