// sample_with_stats: sample's Gumbel-max draw, and in the same pass over each row the statistics
// of softmax(logits) that confidence scores read: the drawn token's log-probability, the entropy
// and the self-certainty KL(uniform over the finite logits || p). The value checks ride on the
// draw as in sample (a row whose keys are not all finite is looked at again).
#include <cmath>
#include <vector>

#include "categorical.h"
#include "ops.h"
#include "value_checks.h"

namespace specalign {
namespace {

struct RowStats {
  float log_prob, entropy, certainty;
};

// Online log-sum-exp over the finite logits: with m the running max, s = sum exp(x - m),
// t = sum exp(x - m) (x - m) and u = sum (x - m). A larger max m' gives s' = s e^d,
// t' = e^d (t + s d) and u' = u + n d, with d = m - m' and n the finite logits so far. Then
// log Z = m + log s, entropy = log s - t / s and certainty = log s - u / n - log n; every term
// is taken about the max, so large logits lose no precision.
struct SoftmaxMoments {
  float max = kNegInf;
  double sum_exp = 0, sum_exp_shifted = 0, sum_shifted = 0;
  int64_t finite = 0;

  // Inlined into the multi-versioned row pass, so it is compiled for each of its targets.
  __attribute__((always_inline)) inline void add(const float* x, int64_t count) {
    const float top = block_max(x, count);
    if (top == kNegInf) return;
    if (top > max) {
      if (max > kNegInf) {
        const double d = static_cast<double>(max) - top, scale = std::exp(d);
        sum_exp_shifted = scale * (sum_exp_shifted + sum_exp * d);
        sum_exp *= scale;
        sum_shifted += finite * d;
      }
      max = top;
    }
    float s = 0, t = 0, u = 0;
    int64_t n = 0;
#pragma omp simd reduction(+ : s, t, u, n)
    for (int64_t i = 0; i < count; ++i) {
      const bool is_finite = x[i] > kNegInf;
      const float shifted = is_finite ? x[i] - max : 0.0f;
      const float e = is_finite ? simd_exp(shifted) : 0.0f;
      s += e;
      t += e * shifted;
      u += shifted;
      n += is_finite;
    }
    sum_exp += s;
    sum_exp_shifted += t;
    sum_shifted += u;
    finite += n;
  }

  RowStats stats(float token_logit) const {
    const double log_sum = std::log(sum_exp), n = static_cast<double>(finite);
    return {static_cast<float>(token_logit - max - log_sum), static_cast<float>(log_sum - sum_exp_shifted / sum_exp),
            static_cast<float>(log_sum - sum_shifted / n - std::log(n))};
  }
};

// gumbel_argmax's draw (the same keys, so the same token) with the moments taken block by block
// while each block is in cache. A copy of its loop, not gumbel_argmax with a per-block callback:
// that version measured about 20% slower here (bench/NOTES.md), likely the callback not compiled
// for the row pass's targets.
SPECALIGN_ROW_PASS Draw draw_with_stats(const float* logits, int64_t n, const StreamKey& noise, RowStats& stats) {
  float keys[kBlock];
  Argmax winner{0, kNegInf};
  SoftmaxMoments moments;
  int32_t nan_seen = 0;
  for (int64_t first = 0; first < n; first += kBlock) {
    const int64_t count = std::min(kBlock, n - first);
    philox_uniforms(noise, first, count, keys);
#pragma omp simd reduction(| : nan_seen)
    for (int64_t i = 0; i < count; ++i) {
      keys[i] = logits[first + i] - simd_log(-simd_log(keys[i]));
      nan_seen |= keys[i] != keys[i];
    }
    winner.update(keys, first, count);
    moments.add(logits + first, count);
  }
  stats = moments.stats(logits[winner.index]);
  return {winner.index, nan_seen != 0 || !std::isfinite(winner.key)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_with_stats_cpu(
    const at::Tensor& logits, const at::Tensor& seeds, const at::Tensor& positions) {
  TORCH_CHECK(logits.dim() == 2, "sample_with_stats: logits must be [B, V]");
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  const at::Tensor rows = logits.contiguous(), seeds_c = seeds.contiguous(), positions_c = positions.contiguous();
  at::Tensor tokens = at::empty({batch}, logits.options().dtype(at::kLong));
  at::Tensor log_prob = at::empty({batch}, logits.options().dtype(at::kFloat));
  at::Tensor entropy = at::empty_like(log_prob), certainty = at::empty_like(log_prob);
  at::Tensor status = at::zeros({}, logits.options().dtype(at::kInt));
  const int64_t* seed = seeds_c.data_ptr<int64_t>();
  const int64_t* position = positions_c.data_ptr<int64_t>();
  int64_t* token = tokens.data_ptr<int64_t>();
  float *log_prob_out = log_prob.data_ptr<float>(), *entropy_out = entropy.data_ptr<float>();
  float* certainty_out = certainty.data_ptr<float>();
  int32_t* status_data = status.data_ptr<int32_t>();

  SPECALIGN_DISPATCH_FLOATS(rows.scalar_type(), "sample_with_stats_cpu", [&] {
    const scalar_t* data = rows.const_data_ptr<scalar_t>();
    at::parallel_for(0, batch, rows_per_task(vocab), [&](int64_t begin, int64_t end) {
      std::vector<float> buffer(std::is_same_v<scalar_t, float> ? 0 : vocab);
      int32_t flags = 0;
      for (int64_t b = begin; b < end; ++b) {
        const float* row = as_float_row(data + b * vocab, vocab, buffer.data());
        RowStats stats;
        const Draw draw = draw_with_stats(row, vocab, StreamKey(seed[b], position[b], kStreamNoise), stats);
        token[b] = draw.index;
        log_prob_out[b] = stats.log_prob;
        entropy_out[b] = stats.entropy;
        certainty_out[b] = stats.certainty;
        flags |= position[b] < 0 ? kNegativePosition : 0;
        if (draw.suspect) flags |= logits_row_flags(data + b * vocab, vocab, kTargetNotFinite, kTargetEmptyRow);
      }
      report(status_data, flags);
    });
  });
  return {tokens, log_prob, entropy, certainty, status};
}

}  // namespace specalign
