// Operator schemas, declared once for every backend. Kernels register per
// dispatch key in csrc/cpu and csrc/cuda; autograd in csrc/autograd (mix) and
// csrc/fused.cpp (fused_mix); fake kernels in msmix_ext/ops.py.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(msmix, m) {
  // S' of design.md §4.3: [B, B], float64 for float64 features, float32 otherwise.
  m.def("similarity(Tensor[] feats) -> Tensor");
  // SASS pairs (design.md §4) and lam0 ~ Beta(alpha, alpha) (design.md §5), all drawn
  // from the one int64 seed tensor: (idx1 [K], idx2 [K], lam0 [K]).
  m.def(
      "sass_select(Tensor[] feats, int num_mix, float threshold, Tensor seed, float alpha) "
      "-> (Tensor idx1, Tensor idx2, Tensor lam0)");
  // design.md §6: (cat(f_m, mixed_m) for every m, cat(y, mixed_y)).
  m.def(
      "mix(Tensor[] feats, Tensor labels, Tensor idx1, Tensor idx2, Tensor lam, "
      "Tensor lam_label) -> (Tensor[] feats_out, Tensor labels_out)");
  // Gradients of mix. output_mask = (feats, labels, lam, lam_label); an
  // unrequested gradient comes back empty ([] or a [0] tensor). feats and
  // labels are read only for the lam and lam_label gradients.
  m.def(
      "mix_backward(Tensor[] grad_feats_out, Tensor grad_labels_out, Tensor[] feats, "
      "Tensor labels, Tensor idx1, Tensor idx2, Tensor lam, Tensor lam_label, "
      "bool[4] output_mask) -> (Tensor[] grad_feats, Tensor grad_labels, Tensor grad_lam, "
      "Tensor grad_lam_label)");
  // The whole MS-Mix call (design.md §3-6) in one operator: sass_select, the
  // ratios from the intensities [M, B], mix, and labels[idx1], labels[idx2].
  // Bitwise what composing sass_select, msmix_ext.mix_ratios and mix gives.
  m.def(
      "fused_mix(Tensor[] feats, Tensor labels, Tensor intensities, int num_mix, float threshold, "
      "Tensor seed, float alpha) -> (Tensor[] feats_out, Tensor labels_out, Tensor idx1, "
      "Tensor idx2, Tensor lam, Tensor lam_label, Tensor lam0, Tensor labels1, Tensor labels2)");
  // Gradients of fused_mix for feats, labels and intensities, one per
  // output_mask entry (an unrequested one comes back as [] or a [0] tensor).
  // feats and labels are read only for the intensities' gradient. The
  // gradients of lam, lam_label, labels1 and labels2 are optional: None is
  // zero (the usual case: a loss reads the combined rows, not the ratios).
  m.def(
      "fused_mix_backward(Tensor[] grad_feats_out, Tensor grad_labels_out, Tensor? grad_lam, "
      "Tensor? grad_lam_label, Tensor? grad_labels1, Tensor? grad_labels2, Tensor[] feats, "
      "Tensor labels, Tensor intensities, Tensor idx1, Tensor idx2, Tensor lam, Tensor lam_label, "
      "bool[3] output_mask) -> (Tensor[] grad_feats, Tensor grad_labels, Tensor grad_intensities)");
}

TORCH_LIBRARY_IMPL(msmix, Autograd, m) {
  // SASS returns indices and random ratios: nothing to differentiate, even when
  // the features it reads require grad (the usual case in training).
  m.impl("sass_select", torch::CppFunction::makeFallthrough());
  // No derivative: S' (msmix_ext.reference.similarity is the differentiable
  // one) and the two backward operators (no second derivative). Their outputs
  // get a node that raises "derivative for msmix::<op> is not implemented" if a
  // backward pass reaches it; in C++, as fused_mix's backward calls one on every
  // pass (a Python autograd kernel re-entered Python there each time).
  m.impl("similarity", torch::autograd::autogradNotImplementedFallback());
  m.impl("mix_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("fused_mix_backward", torch::autograd::autogradNotImplementedFallback());
}
