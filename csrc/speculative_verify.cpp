// speculative_verify (from logits, standard and SSS) and speculative_verify_probs: per row, accept
// drafts left to right and emit one residual or bonus token, all in one pass over the rows reached.
// The value checks ride on that pass (value_checks.h): a row whose normaliser or key is not finite
// is looked at again, and every other check is a few compares on values the pass holds anyway.
#include <cmath>
#include <vector>

#include "categorical.h"
#include "ops.h"
#include "value_checks.h"

namespace specalign {
namespace {

// m + log(sum exp(x - m)), m = max(x). NaN exactly when x holds NaN or +inf or is -inf everywhere,
// which sends the row to the value checks.
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

// Residual norm(max(0, p - q)), or norm(p) when q is null; the rows' value checks are made block by
// block on the way (a check left null is skipped).
SPECALIGN_ROW_PASS Race race_from_probs(const float* p, const float* q, int64_t n, const StreamKey& noise,
                                        ProbsCheck* p_check, ProbsCheck* q_check) {
  return exponential_race(n, noise, [=](int64_t first, int64_t count, float* weights) {
    if (p_check != nullptr) p_check->add(p + first, count);
    if (q_check != nullptr) q_check->add(q + first, count);
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

// The SSS target tl + (dl - rl), -inf where either draft is -inf (see ops.shifted_target_logits).
// False when some dl - rl is not finite (NaN, or an infinite input), which sends the row to the
// value checks.
template <typename scalar_t>
SPECALIGN_ROW_PASS bool shifted_target_row(const scalar_t* target, const scalar_t* draft, const scalar_t* ref, int64_t n,
                                           float* out) {
  float check = 0.0f;  // sum of (dl - rl) * 0: 0 while every difference is finite, else NaN
#pragma omp simd reduction(+ : check)
  for (int64_t i = 0; i < n; ++i) {
    const float d = static_cast<float>(draft[i]), r = static_cast<float>(ref[i]);
    const bool finite = d > kNegInf && r > kNegInf;
    out[i] = static_cast<float>(target[i]) + (finite ? d - r : kNegInf);
    check += (d - r) * 0.0f;
  }
  return check == 0.0f;
}

struct Outputs {
  at::Tensor tokens, num_accepted, num_emitted, status;

  Outputs(int64_t batch, int64_t num_draft, const at::TensorOptions& options)
      : tokens(at::full({batch, num_draft + 1}, -1, options.dtype(at::kLong))),
        num_accepted(at::empty({batch}, options.dtype(at::kLong))),
        num_emitted(at::empty({batch}, options.dtype(at::kLong))),
        status(at::zeros({}, options.dtype(at::kInt))) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {tokens, num_accepted, num_emitted, status};
  }
};

// Where one row's results go.
struct RowOutputs {
  int64_t *tokens, *num_accepted, *num_emitted;  // [B, K+1], [B], [B]
  int64_t width;                                 // K+1

  explicit RowOutputs(const Outputs& out)
      : tokens(out.tokens.data_ptr<int64_t>()), num_accepted(out.num_accepted.data_ptr<int64_t>()),
        num_emitted(out.num_emitted.data_ptr<int64_t>()), width(out.tokens.size(1)) {}

  // Row b accepted its first `accepted` drafts (already written), then emits `token` (-1: none).
  void finish(int64_t b, int64_t accepted, int64_t token) const {
    num_accepted[b] = accepted;
    num_emitted[b] = accepted + (token >= 0);
    if (token >= 0) tokens[b * width + accepted] = token;
  }
};

// The per-row state both verify kernels read: drafts as int64, seeds and positions.
struct RowInputs {
  at::Tensor drafts, seeds, positions;

  RowInputs(const at::Tensor& draft_tokens, const at::Tensor& seeds_in, const at::Tensor& positions_in)
      : drafts(draft_tokens.to(at::kLong).contiguous()), seeds(seeds_in.contiguous()),
        positions(positions_in.contiguous()) {}

  int64_t num_draft() const { return drafts.size(1); }
  const int64_t* draft(int64_t b) const { return drafts.const_data_ptr<int64_t>() + b * num_draft(); }
  int64_t seed(int64_t b) const { return seeds.const_data_ptr<int64_t>()[b]; }
  int64_t position(int64_t b) const { return positions.const_data_ptr<int64_t>()[b]; }
  int32_t flags(int64_t b, int64_t vocab) const { return token_flags(draft(b), num_draft(), vocab, position(b)); }
};

bool accept(const RowInputs& in, int64_t b, int64_t j, float ratio) {
  return uniform(in.seed(b), in.position(b) + j, 0, kStreamAccept) < ratio;
}

bool in_vocab(int64_t token, int64_t vocab) { return 0 <= token && token < vocab; }

// Float32 row buffers of one thread, for inputs that are not float32 and for the SSS target.
struct RowBuffers {
  std::vector<float> target, draft;

  RowBuffers(int64_t vocab, bool convert_target, bool convert_draft)
      : target(convert_target ? vocab : 0), draft(convert_draft ? vocab : 0) {}
};

// The logits of speculative_verify, row by row.
template <typename scalar_t>
class LogitsRows {
 public:
  LogitsRows(const at::Tensor& draft, const at::Tensor& target, const at::Tensor& ref)
      : vocab(target.size(2)), target_(target.const_data_ptr<scalar_t>()), draft_(draft.const_data_ptr<scalar_t>()),
        ref_(ref.defined() ? ref.const_data_ptr<scalar_t>() : nullptr), target_rows_(target.size(1)),
        draft_rows_(draft.size(1)) {}

  const int64_t vocab;

  bool shifted() const { return ref_ != nullptr; }

  // The row the target distribution is the softmax of at position j, as float32; `suspect` is set
  // when the SSS inputs of the row need the value checks.
  const float* target(int64_t b, int64_t j, float* buffer, bool& suspect) const {
    if (!shifted()) return as_float_row(target_at(b, j), vocab, buffer);
    suspect |= !shifted_target_row(target_at(b, j), draft_at(b, j), ref_at(b, j), vocab, buffer);
    return buffer;
  }

  const float* draft(int64_t b, int64_t j, float* buffer) const { return as_float_row(draft_at(b, j), vocab, buffer); }

  // The exact value-check flags of the inputs of target row j, and of draft row j as a proposal.
  int32_t target_flags(int64_t b, int64_t j) const {
    return shifted() ? shifted_row_flags(target_at(b, j), draft_at(b, j), ref_at(b, j), vocab)
                     : logits_row_flags(target_at(b, j), vocab, kTargetNotFinite, kTargetEmptyRow);
  }
  int32_t draft_flags(int64_t b, int64_t j) const {
    return logits_row_flags(draft_at(b, j), vocab, kDraftNotFinite, kDraftEmptyRow);
  }

 private:
  const scalar_t* target_at(int64_t b, int64_t j) const { return target_ + (b * target_rows_ + j) * vocab; }
  const scalar_t* draft_at(int64_t b, int64_t j) const { return draft_ + (b * draft_rows_ + j) * vocab; }
  const scalar_t* ref_at(int64_t b, int64_t j) const { return ref_ + (b * draft_rows_ + j) * vocab; }

  const scalar_t *target_, *draft_, *ref_;  // [B, K+1, V], [B, K or K+1, V], like the draft or null
  const int64_t target_rows_, draft_rows_;
};

// Verifies row b from logits and returns its value-check flags.
template <typename scalar_t>
int32_t verify_logits_row(const LogitsRows<scalar_t>& rows, const RowInputs& in, int64_t b, bool has_bonus,
                          RowBuffers& buffers, const RowOutputs& out) {
  const int64_t vocab = rows.vocab, num_draft = in.num_draft();
  const int64_t* x = in.draft(b);
  int32_t flags = in.flags(b, vocab);
  int64_t j = 0, token = -1;
  for (; j < num_draft; ++j) {
    bool suspect = false;
    const float* a = rows.target(b, j, buffers.target.data(), suspect);
    const float* d = rows.draft(b, j, buffers.draft.data());
    const float lse_a = logsumexp(a, vocab), lse_d = logsumexp(d, vocab);
    if (suspect || !std::isfinite(lse_a)) flags |= rows.target_flags(b, j);
    if (!std::isfinite(lse_d)) flags |= rows.draft_flags(b, j);
    // A draft id outside [0, V) has no draft probability: a rejection.
    const float log_q = in_vocab(x[j], vocab) ? d[x[j]] - lse_d : kNegInf;
    if (log_q > kNegInf && accept(in, b, j, std::exp((a[x[j]] - lse_a) - log_q))) {
      out.tokens[b * out.width + j] = x[j];
      continue;
    }
    const StreamKey noise(in.seed(b), in.position(b) + j, kStreamNoise);
    const Race residual = residual_from_logits(a, lse_a, d, lse_d, vocab, noise);
    // p <= q everywhere up to rounding: the residual is p itself.
    token = residual.max_weight > 0.0f ? residual.index : gumbel_argmax(a, vocab, noise).index;
    break;
  }
  if (j == num_draft && has_bonus) {
    bool suspect = false;
    const float* a = rows.target(b, j, buffers.target.data(), suspect);
    const Draw bonus = gumbel_argmax(a, vocab, StreamKey(in.seed(b), in.position(b) + j, kStreamNoise));
    if (suspect || bonus.suspect) flags |= rows.target_flags(b, j);
    token = bonus.index;
  }
  out.finish(b, j, token);
  return flags;
}

// Verifies row b from probabilities and returns its value-check flags. p_rows: [K+1, V]; q_rows: [K, V].
template <typename scalar_t>
int32_t verify_probs_row(const scalar_t* p_rows, const scalar_t* q_rows, int64_t vocab, const RowInputs& in,
                         int64_t b, RowBuffers& buffers, const RowOutputs& out) {
  const int64_t num_draft = in.num_draft();
  const int64_t* x = in.draft(b);
  int32_t flags = in.flags(b, vocab);
  // Acceptance reads two entries per draft; only the one row (pair) sampled from is read whole.
  int64_t j = 0;
  for (; j < num_draft && in_vocab(x[j], vocab); ++j) {  // an id outside [0, V) is a rejection
    const float p_x = static_cast<float>(p_rows[j * vocab + x[j]]);
    const float q_x = static_cast<float>(q_rows[j * vocab + x[j]]);
    flags |= (bad_probability(p_x) ? kTargetNotFinite : 0) | (bad_probability(q_x) ? kDraftNotFinite : 0);
    if (!(q_x > 0.0f && accept(in, b, j, p_x / q_x))) break;
    out.tokens[b * out.width + j] = x[j];
  }
  const StreamKey noise(in.seed(b), in.position(b) + j, kStreamNoise);
  const float* p = as_float_row(p_rows + j * vocab, vocab, buffers.target.data());
  ProbsCheck p_check, q_check;
  Race race{0, 0.0f};
  if (j < num_draft) {
    race = race_from_probs(p, as_float_row(q_rows + j * vocab, vocab, buffers.draft.data()), vocab, noise, &p_check,
                           &q_check);
    flags |= q_check.flags(kDraftNotFinite, kDraftEmptyRow);
  }
  // After K acceptances, or when p <= q everywhere up to rounding, draw from p itself.
  if (race.max_weight <= 0.0f) race = race_from_probs(p, nullptr, vocab, noise, j < num_draft ? nullptr : &p_check, nullptr);
  flags |= p_check.flags(kTargetNotFinite, kTargetEmptyRow);
  out.finish(b, j, race.index);
  return flags;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> speculative_verify_cpu(
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
  const Outputs out(batch, num_draft, draft_tokens.options());
  const RowOutputs row_out(out);
  int32_t* status = out.status.data_ptr<int32_t>();

  SPECALIGN_DISPATCH_FLOATS(target.scalar_type(), "speculative_verify_cpu", [&] {
    const LogitsRows<scalar_t> rows(draft, target, ref);
    constexpr bool is_float = std::is_same_v<scalar_t, float>;
    at::parallel_for(0, batch, rows_per_task(vocab * 2 * num_draft), [&](int64_t begin, int64_t end) {
      RowBuffers buffers(vocab, !is_float || shifted, !is_float);
      int32_t flags = 0;
      for (int64_t b = begin; b < end; ++b) flags |= verify_logits_row(rows, in, b, has_bonus, buffers, row_out);
      report(status, flags);
    });
  });
  return out.tuple();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> speculative_verify_probs_cpu(
    const at::Tensor& draft_tokens, const at::Tensor& draft_probs, const at::Tensor& target_probs,
    const at::Tensor& seeds, const at::Tensor& positions) {
  TORCH_CHECK(draft_tokens.dim() == 2 && draft_probs.dim() == 3 && target_probs.dim() == 3,
              "speculative_verify_probs: expected draft_tokens [B, K] and probs [B, rows, V]");
  const int64_t batch = draft_tokens.size(0), num_draft = draft_tokens.size(1), vocab = target_probs.size(2);
  const at::Tensor draft = draft_probs.contiguous(), target = target_probs.contiguous();
  const RowInputs in(draft_tokens, seeds, positions);
  const Outputs out(batch, num_draft, draft_tokens.options());
  const RowOutputs row_out(out);
  int32_t* status = out.status.data_ptr<int32_t>();

  SPECALIGN_DISPATCH_FLOATS(target.scalar_type(), "speculative_verify_probs_cpu", [&] {
    const int64_t draft_rows = draft.size(1), target_rows = target.size(1);
    const scalar_t* draft_data = draft.const_data_ptr<scalar_t>();
    const scalar_t* target_data = target.const_data_ptr<scalar_t>();
    constexpr bool is_float = std::is_same_v<scalar_t, float>;
    at::parallel_for(0, batch, rows_per_task(vocab * 2), [&](int64_t begin, int64_t end) {
      RowBuffers buffers(vocab, !is_float, !is_float);
      int32_t flags = 0;
      for (int64_t b = begin; b < end; ++b) {
        flags |= verify_probs_row(target_data + b * target_rows * vocab, draft_data + b * draft_rows * vocab, vocab, in,
                                  b, buffers, row_out);
      }
      report(status, flags);
    });
  });
  return out.tuple();
}

}  // namespace specalign
