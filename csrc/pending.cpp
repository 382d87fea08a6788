// Temporary: replaced by the real kernels.
#include "ops.h"
namespace specalign {
std::tuple<at::Tensor, at::Tensor, at::Tensor> speculative_verify_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&) { TORCH_CHECK(false, "pending"); }
std::tuple<at::Tensor, at::Tensor, at::Tensor> speculative_verify_probs_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { TORCH_CHECK(false, "pending"); }
at::Tensor sample_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&) { TORCH_CHECK(false, "pending"); }
void compact_rows_cpu(at::TensorList, const at::Tensor&, at::IntArrayRef) { TORCH_CHECK(false, "pending"); }
std::tuple<at::Tensor, at::Tensor> compact_columns_cpu(at::TensorList, const at::Tensor&, at::IntArrayRef) { TORCH_CHECK(false, "pending"); }
}
