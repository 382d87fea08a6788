// CPU kernels of the specalign ops; the contract (shapes, semantics) is python/specalign/ops.py. The
// sampling kernels also return their value-check status (value_checks.h).
#pragma once
#include <torch/torch.h>
#include <tuple>
#include <vector>

namespace specalign {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> speculative_verify_cpu(
    const at::Tensor& draft_tokens, const at::Tensor& draft_logits, const at::Tensor& target_logits,
    const c10::optional<at::Tensor>& ref_logits, const at::Tensor& seeds, const at::Tensor& positions);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> speculative_verify_probs_cpu(
    const at::Tensor& draft_tokens, const at::Tensor& draft_probs, const at::Tensor& target_probs,
    const at::Tensor& seeds, const at::Tensor& positions);

std::tuple<at::Tensor, at::Tensor> sample_cpu(const at::Tensor& logits, const at::Tensor& seeds,
                                              const at::Tensor& positions);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_with_stats_cpu(
    const at::Tensor& logits, const at::Tensor& seeds, const at::Tensor& positions);

void compact_rows_cpu(at::TensorList tensors, const at::Tensor& keep, at::IntArrayRef dims);

void fork_rows_cpu(at::TensorList tensors, const at::Tensor& index, at::IntArrayRef dims);

std::tuple<at::Tensor, at::Tensor> compact_columns_cpu(at::TensorList tensors, const at::Tensor& keep_mask,
                                                      at::IntArrayRef dims);

}  // namespace specalign
