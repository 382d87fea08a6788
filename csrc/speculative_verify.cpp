// speculative_verify (from logits, standard and SSS) and speculative_verify_probs: per row, accept
// drafts left to right and emit one residual or bonus token, all in one pass over the rows reached.
#include <cmath>
#include <vector>

#include "categorical.h"
#include "ops.h"

namespace specalign {
namespace {

// m + log(sum exp(x - m)), m = max(x).
SPECALIGN_ROW_PASS float logsumexp(const float* x, int64_t n) {
  const float m = block_max(x, n);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += simd_exp(x[i] - m);
  return m + std::log(sum);
}

// Residual norm(max(0, p - q)) with p = exp(a - lse_a), q = exp(d - lse_d).
SPECALIGN_ROW_PASS Race residual_from_logits(const float* a, float lse_a, const float* d, float lse_d, int64_t n,
                                             const StreamKey& noise) {
  return exponential_race(n, noise, [=](int64_t first, int64_t count, float* weights) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) {
      const float r = simd_exp(a[first + i] - lse_a) - simd_exp(d[first + i] - lse_d);
      weights[i] = r > 0.0f ? r : 0.0f;
    }
  });
}

// Residual norm(max(0, p - q)), or norm(p) when q is null.
SPECALIGN_ROW_PASS Race race_from_probs(const float* p, const float* q, int64_t n, const StreamKey& noise) {
  return exponential_race(n, noise, [=](int64_t first, int64_t count, float* weights) {
    if (q == nullptr) {
      std::copy(p + first, p + first + count, weights);
      return;
    }
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) {
      const float r = p[first + i] - q[first + i];
      weights[i] = r > 0.0f ? r : 0.0f;
    }
  });
}

// The SSS target tl + (dl - rl), -inf where either draft is -inf (see reference.shifted_target_logits).
template <typename scalar_t>
SPECALIGN_ROW_PASS void shifted_target_row(const scalar_t* target, const scalar_t* draft, const scalar_t* ref, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float d = static_cast<float>(draft[i]), r = static_cast<float>(ref[i]);
    const bool finite = d > kNegInf && r > kNegInf;
    out[i] = static_cast<float>(target[i]) + (finite ? d - r : kNegInf);
  }
}

struct Outputs {
  at::Tensor tokens, num_accepted, num_emitted;

  Outputs(int64_t batch, int64_t num_draft, const at::TensorOptions& options)
      : tokens(at::full({batch, num_draft + 1}, -1, options.dtype(at::kLong))),
        num_accepted(at::empty({batch}, options.dtype(at::kLong))),
        num_emitted(at::empty({batch}, options.dtype(at::kLong))) {}
};

// The per-row state both verify kernels read: drafts as int64, seeds and positions.
struct RowInputs {
  at::Tensor drafts, seeds, positions;

  RowInputs(const at::Tensor& draft_tokens, const at::Tensor& seeds_in, const at::Tensor& positions_in)
      : drafts(draft_tokens.to(at::kLong).contiguous()), seeds(seeds_in.contiguous()),
        positions(positions_in.contiguous()) {}

  const int64_t* draft(int64_t b) const { return drafts.const_data_ptr<int64_t>() + b * drafts.size(1); }
  int64_t seed(int64_t b) const { return seeds.const_data_ptr<int64_t>()[b]; }
  int64_t position(int64_t b) const { return positions.const_data_ptr<int64_t>()[b]; }
};

bool accept(const RowInputs& in, int64_t b, int64_t j, float ratio) {
  return uniform(in.seed(b), in.position(b) + j, 0, kStreamAccept) < ratio;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> speculative_verify_cpu(
    const at::Tensor& draft_tokens, const at::Tensor& draft_logits, const at::Tensor& target_logits,
    const c10::optional<at::Tensor>& ref_logits, const at::Tensor& seeds, const at::Tensor& positions) {
  TORCH_CHECK(draft_tokens.dim() == 2 && draft_logits.dim() == 3 && target_logits.dim() == 3,
              "speculative_verify: expected draft_tokens [B, K] and logits [B, rows, V]");
  const int64_t batch = draft_tokens.size(0), num_draft = draft_tokens.size(1), vocab = target_logits.size(2);
  const bool shifted = ref_logits.has_value();
  const bool has_bonus = !shifted || draft_logits.size(1) == num_draft + 1;
  const at::Tensor draft = draft_logits.contiguous(), target = target_logits.contiguous();
  const at::Tensor ref = shifted ? ref_logits->contiguous() : at::Tensor();
  const RowInputs in(draft_tokens, seeds, positions);
  Outputs out(batch, num_draft, draft_tokens.options());
  int64_t* tokens = out.tokens.data_ptr<int64_t>();
  int64_t* num_accepted = out.num_accepted.data_ptr<int64_t>();
  int64_t* num_emitted = out.num_emitted.data_ptr<int64_t>();

  SPECALIGN_DISPATCH_FLOATS(target.scalar_type(), "speculative_verify_cpu", [&] {
    const int64_t draft_rows = draft.size(1), target_rows = target.size(1);
    const scalar_t* draft_data = draft.const_data_ptr<scalar_t>();
    const scalar_t* target_data = target.const_data_ptr<scalar_t>();
    const scalar_t* ref_data = shifted ? ref.const_data_ptr<scalar_t>() : nullptr;
    constexpr bool is_float = std::is_same_v<scalar_t, float>;

    at::parallel_for(0, batch, rows_per_task(vocab * 2 * num_draft), [&](int64_t begin, int64_t end) {
      std::vector<float> target_buffer(is_float && !shifted ? 0 : vocab), draft_buffer(is_float ? 0 : vocab);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t* x = in.draft(b);
        // The row the target distribution is the softmax of, at draft position j.
        auto target_row = [&](int64_t j) -> const float* {
          const scalar_t* t = target_data + (b * target_rows + j) * vocab;
          if (!shifted) return as_float_row(t, vocab, target_buffer.data());
          const int64_t offset = (b * draft_rows + j) * vocab;
          shifted_target_row(t, draft_data + offset, ref_data + offset, vocab, target_buffer.data());
          return target_buffer.data();
        };
        int64_t j = 0, token = -1;
        for (; j < num_draft; ++j) {
          const float* a = target_row(j);
          const float* d = as_float_row(draft_data + (b * draft_rows + j) * vocab, vocab, draft_buffer.data());
          const float lse_a = logsumexp(a, vocab), lse_d = logsumexp(d, vocab);
          const float log_q = d[x[j]] - lse_d;
          if (log_q > kNegInf && accept(in, b, j, std::exp((a[x[j]] - lse_a) - log_q))) {
            tokens[b * (num_draft + 1) + j] = x[j];
            continue;
          }
          const StreamKey noise(in.seed(b), in.position(b) + j, kStreamNoise);
          const Race residual = residual_from_logits(a, lse_a, d, lse_d, vocab, noise);
          // p <= q everywhere up to rounding: the residual is p itself.
          token = residual.max_weight > 0.0f ? residual.index : gumbel_argmax(a, vocab, noise);
          break;
        }
        if (j == num_draft && has_bonus) {
          token = gumbel_argmax(target_row(j), vocab, StreamKey(in.seed(b), in.position(b) + j, kStreamNoise));
        }
        num_accepted[b] = j;
        num_emitted[b] = j + (token >= 0);
        if (token >= 0) tokens[b * (num_draft + 1) + j] = token;
      }
    });
  });
  return {out.tokens, out.num_accepted, out.num_emitted};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> speculative_verify_probs_cpu(
    const at::Tensor& draft_tokens, const at::Tensor& draft_probs, const at::Tensor& target_probs,
    const at::Tensor& seeds, const at::Tensor& positions) {
  TORCH_CHECK(draft_tokens.dim() == 2 && draft_probs.dim() == 3 && target_probs.dim() == 3,
              "speculative_verify_probs: expected draft_tokens [B, K] and probs [B, rows, V]");
  const int64_t batch = draft_tokens.size(0), num_draft = draft_tokens.size(1), vocab = target_probs.size(2);
  const at::Tensor draft = draft_probs.contiguous(), target = target_probs.contiguous();
  const RowInputs in(draft_tokens, seeds, positions);
  Outputs out(batch, num_draft, draft_tokens.options());
  int64_t* tokens = out.tokens.data_ptr<int64_t>();
  int64_t* num_accepted = out.num_accepted.data_ptr<int64_t>();
  int64_t* num_emitted = out.num_emitted.data_ptr<int64_t>();

  SPECALIGN_DISPATCH_FLOATS(target.scalar_type(), "speculative_verify_probs_cpu", [&] {
    const int64_t draft_rows = draft.size(1), target_rows = target.size(1);
    const scalar_t* draft_data = draft.const_data_ptr<scalar_t>();
    const scalar_t* target_data = target.const_data_ptr<scalar_t>();
    constexpr bool is_float = std::is_same_v<scalar_t, float>;

    // Acceptance reads two entries per draft; only the one row (pair) sampled from is read whole.
    at::parallel_for(0, batch, rows_per_task(vocab * 2), [&](int64_t begin, int64_t end) {
      std::vector<float> target_buffer(is_float ? 0 : vocab), draft_buffer(is_float ? 0 : vocab);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t* x = in.draft(b);
        const scalar_t* p_rows = target_data + b * target_rows * vocab;
        const scalar_t* q_rows = draft_data + b * draft_rows * vocab;
        int64_t j = 0;
        for (; j < num_draft; ++j) {
          const float p_x = static_cast<float>(p_rows[j * vocab + x[j]]);
          const float q_x = static_cast<float>(q_rows[j * vocab + x[j]]);
          if (!(q_x > 0.0f && accept(in, b, j, p_x / q_x))) break;
          tokens[b * (num_draft + 1) + j] = x[j];
        }
        const StreamKey noise(in.seed(b), in.position(b) + j, kStreamNoise);
        const float* p = as_float_row(p_rows + j * vocab, vocab, target_buffer.data());
        Race race{0, 0.0f};
        if (j < num_draft) {
          race = race_from_probs(p, as_float_row(q_rows + j * vocab, vocab, draft_buffer.data()), vocab, noise);
        }
        // After K acceptances, or when p <= q everywhere up to rounding, draw from p itself.
        if (race.max_weight <= 0.0f) race = race_from_probs(p, nullptr, vocab, noise);
        num_accepted[b] = j;
        num_emitted[b] = j + 1;
        tokens[b * (num_draft + 1) + j] = race.index;
      }
    });
  });
  return {out.tokens, out.num_accepted, out.num_emitted};
}

}  // namespace specalign
