// The categorical draws of the CPU kernels, without normalising anything (docs/math.md, "Sampling
// without a distribution"): Gumbel-max over logits and the exponential race over weights, both keyed
// by one row's noise stream.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "float_rows.h"
#include "random_streams.h"

namespace specalign {

// A draw and whether its row needs the value checks: a NaN key, or a winning key that is +inf (a
// +inf logit) or -inf (no logit above -inf).
struct Draw {
  int64_t index;
  bool suspect;
};

// argmax_v logits_v - log E_v with E_v = -log u_v: a draw from softmax(logits). A row that is -inf
// everywhere gives 0, as torch.argmax does.
SPECALIGN_ROW_PASS inline Draw gumbel_argmax(const float* logits, int64_t n, const StreamKey& noise) {
  float keys[kBlock];
  Argmax winner{0, kNegInf};
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
  }
  return {winner.index, nan_seen != 0 || !std::isfinite(winner.key)};
}

// An exponential race argmax_v w_v / E_v; `max_weight` tells an all-zero residual apart.
struct Race {
  int64_t index;
  float max_weight;
};

// The race over weights that `fill(first, count, weights)` writes one block at a time. Inlined into
// each row pass so that it is compiled for the pass's instruction set.
template <typename FillWeights>
__attribute__((always_inline)) inline Race exponential_race(int64_t n, const StreamKey& noise, FillWeights fill) {
  float weights[kBlock], keys[kBlock];
  Argmax winner{0, 0.0f};  // keys are >= 0; an all-zero race picks index 0, as torch.argmax
  float max_weight = 0.0f;
  for (int64_t first = 0; first < n; first += kBlock) {
    const int64_t count = std::min(kBlock, n - first);
    fill(first, count, weights);
    philox_uniforms(noise, first, count, keys);
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) keys[i] = weights[i] / -simd_log(keys[i]);
    winner.update(keys, first, count);
    max_weight = std::max(max_weight, block_max(weights, count));
  }
  return {winner.index, max_weight};
}

}  // namespace specalign
