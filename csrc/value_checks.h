// The value checks of the sampling kernels, made in their own pass over the inputs: status flags
// (mirroring python/specalign/value_checks.py) and the exact flags of one row, computed only for
// rows the kernel's pass found suspicious (a normaliser or key that is not finite).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

namespace specalign {

constexpr int32_t kDraftTokenOutOfRange = 1 << 0;
constexpr int32_t kNegativePosition = 1 << 1;
constexpr int32_t kDraftNotFinite = 1 << 2;  // NaN or +inf (probabilities: anything outside [0, inf))
constexpr int32_t kTargetNotFinite = 1 << 3;
constexpr int32_t kRefNotFinite = 1 << 4;
constexpr int32_t kRefZeroWhereDraftIsNot = 1 << 5;
constexpr int32_t kDraftEmptyRow = 1 << 6;  // logits: -inf everywhere; probabilities: no entry above 0
constexpr int32_t kTargetEmptyRow = 1 << 7;

constexpr float kPosInf = std::numeric_limits<float>::infinity();

inline bool not_finite_logit(float x) { return std::isnan(x) || x == kPosInf; }

inline bool bad_probability(float x) { return !(x >= 0.0f && x < kPosInf); }

// NaN or +inf -> not_finite_flag; no entry above -inf -> empty_flag.
template <typename scalar_t>
int32_t logits_row_flags(const scalar_t* row, int64_t n, int32_t not_finite_flag, int32_t empty_flag) {
  bool not_finite = false, any_entry = false;
  for (int64_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(row[i]);
    not_finite |= not_finite_logit(x);
    any_entry |= x > -kPosInf;
  }
  return (not_finite ? not_finite_flag : 0) | (any_entry ? 0 : empty_flag);
}

// The flags of one SSS row: each input's NaN or +inf, ref -inf where the draft is finite, and a
// shifted target tl + (dl - rl) that is -inf everywhere (computed as the kernels compute it).
template <typename scalar_t>
int32_t shifted_row_flags(const scalar_t* target, const scalar_t* draft, const scalar_t* ref, int64_t n) {
  int32_t flags = 0;
  bool any_entry = false;
  for (int64_t i = 0; i < n; ++i) {
    const float t = static_cast<float>(target[i]), d = static_cast<float>(draft[i]), r = static_cast<float>(ref[i]);
    flags |= (not_finite_logit(t) ? kTargetNotFinite : 0) | (not_finite_logit(d) ? kDraftNotFinite : 0) |
             (not_finite_logit(r) ? kRefNotFinite : 0) | (r == -kPosInf && d > -kPosInf ? kRefZeroWhereDraftIsNot : 0);
    const bool finite = d > -kPosInf && r > -kPosInf;
    any_entry |= t + (finite ? d - r : -kPosInf) > -kPosInf;
  }
  return flags | (any_entry ? 0 : kTargetEmptyRow);
}

// Anything outside [0, inf) -> bad_flag; no entry above 0 -> empty_flag.
template <typename scalar_t>
int32_t probs_row_flags(const scalar_t* row, int64_t n, int32_t bad_flag, int32_t empty_flag) {
  bool bad = false, any_entry = false;
  for (int64_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(row[i]);
    bad |= bad_probability(x);
    any_entry |= x > 0.0f;
  }
  return (bad ? bad_flag : 0) | (any_entry ? 0 : empty_flag);
}

// The value checks of one probability row, fed block by block inside a row pass.
struct ProbsCheck {
  int32_t bad = 0, any_entry = 0;

  __attribute__((always_inline)) inline void add(const float* x, int64_t count) {
    int32_t block_bad = 0, block_any = 0;
#pragma omp simd reduction(| : block_bad, block_any)
    for (int64_t i = 0; i < count; ++i) {
      block_bad |= !(x[i] >= 0.0f && x[i] < kPosInf);
      block_any |= x[i] > 0.0f;
    }
    bad |= block_bad;
    any_entry |= block_any;
  }

  int32_t flags(int32_t bad_flag, int32_t empty_flag) const { return (bad ? bad_flag : 0) | (any_entry ? 0 : empty_flag); }
};

// The flags of one request's draft tokens and position.
inline int32_t token_flags(const int64_t* tokens, int64_t count, int64_t vocab, int64_t position) {
  int32_t flags = position < 0 ? kNegativePosition : 0;
  for (int64_t j = 0; j < count; ++j) flags |= (tokens[j] < 0 || tokens[j] >= vocab) ? kDraftTokenOutOfRange : 0;
  return flags;
}

// ORs one thread's flags into the call's status.
inline void report(int32_t* status, int32_t flags) {
  if (flags != 0) __atomic_fetch_or(status, flags, __ATOMIC_RELAXED);
}

}  // namespace specalign
