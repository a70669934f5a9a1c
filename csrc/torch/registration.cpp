// The schemas of every diffaccel op. Each op has a functional form that
// returns new tensors and an _out form that writes into caller-given tensors
// and returns nothing (the form torch.compile's functionalization handles for
// mutating custom ops). Kernels register per dispatch key in their own files.
#include <torch/library.h>

TORCH_LIBRARY(diffaccel, m) {
  m.def(
      "ei_step(Tensor x, Tensor model_out, Tensor[] history, Tensor coeffs, Tensor? noise, "
      "str? threshold_kind, float threshold_ratio, float threshold_max_value, "
      "str threshold_style) -> (Tensor, Tensor)");
  m.def(
      "ei_step_out(Tensor x, Tensor model_out, Tensor[] history, Tensor coeffs, Tensor? noise, "
      "str? threshold_kind, float threshold_ratio, float threshold_max_value, "
      "str threshold_style, Tensor(a!) x_next_out, Tensor(b!) d_out) -> ()");
  m.def("multistep_combine(Tensor[] tensors, Tensor coeffs) -> Tensor");
  m.def("multistep_combine_out(Tensor[] tensors, Tensor coeffs, Tensor(a!) out) -> ()");
  m.def("multistep_combine_pair(Tensor[] tensors, Tensor coeffs) -> (Tensor, Tensor)");
  m.def("multistep_combine_pair_out(Tensor[] tensors, Tensor coeffs, Tensor(a!) y0_out, Tensor(b!) y1_out) -> ()");
  m.def("threshold(Tensor x, str kind, float ratio, float max_value, str style) -> Tensor");
  m.def(
      "threshold_out(Tensor x, str kind, float ratio, float max_value, str style, "
      "Tensor(a!) out) -> ()");
  m.def(
      "langevin_correct(Tensor x, Tensor score, float snr, Tensor alpha, Tensor? noise, "
      "Generator? generator, str reduction) -> (Tensor, Tensor)");
  m.def(
      "langevin_correct_out(Tensor x, Tensor score, float snr, Tensor alpha, Tensor? noise, "
      "Generator? generator, str reduction, Tensor(a!) x_new_out, Tensor(b!) x_mean_out) -> ()");
  m.def("error_norm(Tensor x_high, Tensor x_low, Tensor x_prev, float atol, float rtol) -> Tensor");
  // error_norm's backward pass (diffaccel/ops/autograd.py calls it): the
  // gradients of x_high, x_low and x_prev from grad = dL/dE and the forward's E.
  m.def(
      "error_norm_backward(Tensor grad, Tensor error, Tensor x_high, Tensor x_low, Tensor x_prev, float atol, "
      "float rtol) -> (Tensor, Tensor, Tensor)");
  // dynamic thresholding's backward pass with the per-sample scales held fixed
  // (diffaccel/ops/autograd.py adds the scales' own gradient): the gradient
  // through clamp(x, -s, s) / s, and per sample its dot product with x.
  m.def("threshold_backward(Tensor grad, Tensor x, Tensor scale) -> (Tensor, Tensor)");
}
