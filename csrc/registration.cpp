// The specalign op schemas (one definition for every backend) and their CPU kernels. The sampling ops
// return a 0-dim int32 status of value-check flags besides their result (python/specalign/value_checks.py).
// CUDA kernels (Triton) and fake implementations are registered in python/specalign/_library.py.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(specalign, m) {
  m.def("speculative_verify(Tensor draft_tokens, Tensor draft_logits, Tensor target_logits, Tensor? ref_logits, "
        "Tensor seeds, Tensor positions) -> (Tensor tokens, Tensor num_accepted, Tensor num_emitted, Tensor status)");
  m.def("speculative_verify_probs(Tensor draft_tokens, Tensor draft_probs, Tensor target_probs, Tensor seeds, "
        "Tensor positions) -> (Tensor tokens, Tensor num_accepted, Tensor num_emitted, Tensor status)");
  m.def("sample(Tensor logits, Tensor seeds, Tensor positions) -> (Tensor tokens, Tensor status)");
  m.def("sample_with_stats(Tensor logits, Tensor seeds, Tensor positions) "
        "-> (Tensor tokens, Tensor log_prob, Tensor entropy, Tensor certainty, Tensor status)");
  m.def("compact_rows(Tensor(a!)[] tensors, Tensor keep, int[] dims) -> ()");
  m.def("fork_rows(Tensor(a!)[] tensors, Tensor index, int[] dims) -> ()");
  m.def("compact_columns(Tensor(a!)[] tensors, Tensor keep_mask, int[] dims) -> (Tensor lengths, Tensor attention_mask)");
}

TORCH_LIBRARY_IMPL(specalign, CPU, m) {
  m.impl("speculative_verify", &specalign::speculative_verify_cpu);
  m.impl("speculative_verify_probs", &specalign::speculative_verify_probs_cpu);
  m.impl("sample", &specalign::sample_cpu);
  m.impl("sample_with_stats", &specalign::sample_with_stats_cpu);
  m.impl("compact_rows", &specalign::compact_rows_cpu);
  m.impl("fork_rows", &specalign::fork_rows_cpu);
  m.impl("compact_columns", &specalign::compact_columns_cpu);
}

// A plain extension module: importing specalign._C runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "specalign CPU kernels and op registration", -1, nullptr};
  return PyModule_Create(&module);
}
