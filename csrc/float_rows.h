// Float rows of the CPU kernels: rows of any float dtype read as float32, exp and log that
// vectorise, and the block-wise maximum and argmax the categorical draws reduce with.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

// Row passes are compiled for x86-64-v4 (AVX-512), v3 (AVX2, FMA) and the baseline, and chosen when
// the library loads. The versions may round exp, log and sums differently in the last ulp, as torch's
// own CPU kernels do, so a token on a float boundary may differ between machines.
#if defined(__x86_64__) && defined(__GNUC__)
#define SPECALIGN_ROW_PASS __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPECALIGN_ROW_PASS
#endif

#define SPECALIGN_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_V2(TYPE, NAME, AT_WRAP(__VA_ARGS__), at::kFloat, at::kBFloat16, at::kHalf)

namespace specalign {

constexpr int64_t kBlock = 256;  // vocabulary entries whose noise and keys live on the stack at once
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Rows of one thread's work share this grain: enough vocabulary entries to be worth a thread.
inline int64_t rows_per_task(int64_t row_length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length));
}

template <typename scalar_t>
SPECALIGN_ROW_PASS inline void convert_row(const scalar_t* row, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(row[i]);
}

// The row itself when it is float32, else its float32 copy in `buffer`.
template <typename scalar_t>
inline const float* as_float_row(const scalar_t* row, int64_t n, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return row;
  } else {
    convert_row(row, n, buffer);
    return buffer;
  }
}

inline float bits_to_float(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

inline uint32_t float_to_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

// exp(x) for x <= 88, within 1 ulp of expf; 0 below -87.34, where expf would leave the normal
// range (so exp(-inf) = 0). Cephes' range reduction and minimax polynomial, branch-free.
inline float simd_exp(float x) {
  constexpr float kMin = -87.33654f;
  constexpr float kRoundToInt = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float clamped = x < kMin ? kMin : x;
  const float n = (clamped * 1.44269504088896341f + kRoundToInt) - kRoundToInt;
  const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 split in two for exactness
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float two_to_n = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return x < kMin ? 0.0f : p * two_to_n;
}

// log(x) for positive normal x, within 1 ulp of logf: x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
// then Cephes' polynomial in m - 1.
inline float simd_log(float x) {
  const uint32_t bits = float_to_bits(x);
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 127);
  const bool halve = m > 1.41421356f;
  m = halve ? m * 0.5f : m;
  e = halve ? e + 1.0f : e;
  const float f = m - 1.0f;
  const float f2 = f * f;
  float y = 7.0376836292e-2f;
  y = y * f + -1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f + -1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f + -1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f + -2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * f2 + e * -2.12194440e-4f - 0.5f * f2;
  return f + y + e * 0.693359375f;
}

inline float block_max(const float* x, int64_t count) {
  float best = kNegInf;
#pragma omp simd reduction(max : best)
  for (int64_t i = 0; i < count; ++i) best = x[i] > best ? x[i] : best;
  return best;
}

// The running argmax of a row's keys, fed block by block; ties go to the lowest index.
struct Argmax {
  int64_t index;
  float key;

  void update(const float* keys, int64_t first, int64_t count) {
    const float best = block_max(keys, count);
    if (best > key) {
      key = best;
      index = first + (std::find(keys, keys + count, best) - keys);
    }
  }
};

}  // namespace specalign
