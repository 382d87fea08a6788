// sample: one Gumbel-max draw per row from softmax(logits), keyed by (seed, position); the value
// checks ride on the draw (a row whose keys are not all finite is looked at again).
#include <vector>

#include "categorical.h"
#include "ops.h"
#include "value_checks.h"

namespace specalign {

std::tuple<at::Tensor, at::Tensor> sample_cpu(const at::Tensor& logits, const at::Tensor& seeds,
                                              const at::Tensor& positions) {
  TORCH_CHECK(logits.dim() == 2, "sample: logits must be [B, V]");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  const at::Tensor rows = logits.contiguous(), seeds_c = seeds.contiguous(), positions_c = positions.contiguous();
  at::Tensor tokens = at::empty({batch}, logits.options().dtype(at::kLong));
  at::Tensor status = at::zeros({}, logits.options().dtype(at::kInt));
  const int64_t* seed = seeds_c.data_ptr<int64_t>();
  const int64_t* position = positions_c.data_ptr<int64_t>();
  int64_t* token = tokens.data_ptr<int64_t>();
  int32_t* status_data = status.data_ptr<int32_t>();

  SPECALIGN_DISPATCH_FLOATS(rows.scalar_type(), "sample_cpu", [&] {
    const scalar_t* data = rows.const_data_ptr<scalar_t>();
    at::parallel_for(0, batch, rows_per_task(vocab), [&](int64_t begin, int64_t end) {
      std::vector<float> buffer(std::is_same_v<scalar_t, float> ? 0 : vocab);
      int32_t flags = 0;
      for (int64_t b = begin; b < end; ++b) {
        const float* row = as_float_row(data + b * vocab, vocab, buffer.data());
        const Draw draw = gumbel_argmax(row, vocab, StreamKey(seed[b], position[b], kStreamNoise));
        token[b] = draw.index;
        flags |= position[b] < 0 ? kNegativePosition : 0;
        if (draw.suspect) flags |= logits_row_flags(data + b * vocab, vocab, kTargetNotFinite, kTargetEmptyRow);
      }
      report(status_data, flags);
    });
  });
  return {tokens, status};
}

}  // namespace specalign
