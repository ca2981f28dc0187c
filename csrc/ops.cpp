// Every operator's schema in one place. Kernels register per device in csrc/<op>/<op>_<device>.cpp|cu;
// autograd formulas and fake (meta) implementations are attached in Python (hbi_ops/_library.py).
#include <Python.h>
#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda.h>
#endif

// `import hbi_ops._C` loads this shared library, which runs the registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {
// The CUDA version the kernels were compiled with (CUDA_VERSION, e.g. 13000), 0 without CUDA kernels:
// hbi_ops/_extension.py compares it with torch's.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDA_VERSION;
#else
  return 0;
#endif
}
}  // namespace

TORCH_LIBRARY(hbi_ops, m) {
  m.def("cuda_version() -> int", &cuda_version);

  // WTI score [A, B] and, for backward, the arg-max frame of every (a, b, word) [A, B, T] and the
  // arg-max word of every (a, b, frame) [A, B, V] (int32, -1 where no real entry carries the maximum).
  m.def(
      "wti_similarity(Tensor text, Tensor video, Tensor text_weight, Tensor video_weight, "
      "Tensor text_mask, Tensor video_mask, bool zero_padding) -> (Tensor, Tensor, Tensor)");
  m.def(
      "wti_similarity_backward(Tensor grad_score, Tensor text, Tensor video, Tensor text_weight, "
      "Tensor video_weight, Tensor t2v_argmax, Tensor v2t_argmax) -> (Tensor, Tensor, Tensor, Tensor)");

  // Banzhaf interaction [B, T, V]. definition: "textbook" | "reference"; estimator: "exact" |
  // "paired" | "msr". The backward pass recomputes the coalitions from the seed.
  m.def(
      "banzhaf_interaction(Tensor sim, Tensor text_mask, Tensor video_mask, Tensor text_weight, "
      "Tensor video_weight, str definition, str estimator, int num_samples, int seed) -> Tensor");
  m.def(
      "banzhaf_interaction_backward(Tensor grad, Tensor sim, Tensor text_mask, Tensor video_mask, "
      "Tensor text_weight, Tensor video_weight, str definition, str estimator, int num_samples, "
      "int seed) -> (Tensor, Tensor, Tensor)");

  // The closed-form textbook index as the CUDA kernel computes it (csrc/banzhaf/closed_form_block.h): on
  // CUDA tensors the kernel, on CPU tensors the same code run by one thread. For the tests: the CPU runs
  // the GPU's per-element code. Inputs as banzhaf_interaction's (masks bool).
  m.def(
      "closed_form_block_forward(Tensor sim, Tensor text_mask, Tensor video_mask, Tensor text_weight, "
      "Tensor video_weight) -> Tensor");
  m.def(
      "closed_form_block_backward(Tensor grad, Tensor sim, Tensor text_mask, Tensor video_mask, "
      "Tensor text_weight, Tensor video_weight) -> (Tensor, Tensor, Tensor)");

  // Density-peaks clustering: (idx [B, N], centers [B, K]), both int64, no gradient.
  m.def("dpc_knn(Tensor x, Tensor mask, int num_clusters, int k) -> (Tensor, Tensor)");

  // Weighted mean of each cluster [B, K, C].
  m.def("merge_tokens(Tensor x, Tensor idx, Tensor weight, int num_clusters) -> Tensor");
  m.def(
      "merge_tokens_backward(Tensor grad, Tensor x, Tensor idx, Tensor weight, int num_clusters) -> (Tensor, "
      "Tensor)");
}
