// Building blocks of the CPU kernels: float views of rows, exp/log that vectorise, Philox noise for
// a block of vocabulary indices, the Gumbel-max pass shared by sample and speculative_verify, and
// the byte-level strided views the compaction kernels move data with.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "philox.h"

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

// The Philox key schedule and fixed counter words of one (seed, position, stream): only the vocab
// index varies along a row.
struct NoiseKey {
  uint64_t round_key0[10], round_key1[10];
  uint64_t position_lo, position_hi, stream;

  NoiseKey(int64_t seed, int64_t position, uint32_t stream_id) {
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
    for (int round = 0; round < 10; ++round, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
      round_key0[round] = k0;
      round_key1[round] = k1;
    }
    position_lo = static_cast<uint32_t>(position);
    position_hi = static_cast<uint32_t>(static_cast<uint64_t>(position) >> 32);
    stream = stream_id;
  }
};

// u of vocab indices [first, first + count), bit for bit philox.h's uniform(). The 32-bit words
// ride in 64-bit lanes so that each 32x32->64 product is a single vector multiply; the upper
// halves carry garbage that no multiply and no output reads.
inline void philox_uniforms(const NoiseKey& key, int64_t first, int64_t count, float* u) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    uint64_t c0 = static_cast<uint64_t>(first + i), c1 = key.position_lo, c2 = key.stream, c3 = key.position_hi;
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = (c0 & 0xFFFFFFFFu) * 0xD2511F53u;
      const uint64_t p1 = (c2 & 0xFFFFFFFFu) * 0xCD9E8D57u;
      c0 = (p1 >> 32) ^ c1 ^ key.round_key0[round];
      c2 = (p0 >> 32) ^ c3 ^ key.round_key1[round];
      c1 = p1;
      c3 = p0;
    }
    u[i] = static_cast<float>(static_cast<int32_t>((static_cast<uint32_t>(c0) >> 9) * 2u + 1u)) * 0x1p-24f;
  }
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

// argmax_v logits_v - log E_v with E_v = -log u_v: a draw from softmax(logits). A row that is -inf
// everywhere gives 0, as torch.argmax does.
SPECALIGN_ROW_PASS inline int64_t gumbel_argmax(const float* logits, int64_t n, const NoiseKey& noise) {
  float keys[kBlock];
  Argmax winner{0, kNegInf};
  for (int64_t first = 0; first < n; first += kBlock) {
    const int64_t count = std::min(kBlock, n - first);
    philox_uniforms(noise, first, count, keys);
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) keys[i] = logits[first + i] - simd_log(-simd_log(keys[i]));
    winner.update(keys, first, count);
  }
  return winner.index;
}

// Some dimensions of a tensor walked as one flat index of cells, outermost first. Every kernel here
// moves each element on its own, so the dimensions may be visited in any order: they are sorted by
// stride and merged wherever memory allows (a transposed cache still walks as one dimension).
struct Cells {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride in bytes)

  Cells(const at::Tensor& t, const std::vector<int64_t>& which) {
    for (const int64_t d : which) {
      if (t.size(d) != 1) dims.emplace_back(t.size(d), t.stride(d) * t.element_size());
    }
    std::stable_sort(dims.begin(), dims.end(), [](const auto& x, const auto& y) { return x.second > y.second; });
    size_t merged = 0;
    for (size_t d = 1; d < dims.size(); ++d) {
      if (dims[merged].second == dims[d].first * dims[d].second) {
        dims[merged] = {dims[merged].first * dims[d].first, dims[d].second};
      } else {
        dims[++merged] = dims[d];
      }
    }
    dims.resize(std::min(dims.size(), merged + 1));
  }

  int64_t count() const {
    int64_t n = 1;
    for (const auto& dim : dims) n *= dim.first;
    return n;
  }
};

// The byte offset of one cell after another, in order, without a division per cell.
class CellWalker {
 public:
  CellWalker(const Cells& cells, int64_t first) : dims_(cells.dims), index_(dims_.size()) {
    for (int64_t d = static_cast<int64_t>(dims_.size()) - 1; d >= 0; --d) {
      index_[d] = first % dims_[d].first;
      first /= dims_[d].first;
      offset_ += index_[d] * dims_[d].second;
    }
  }

  int64_t offset() const { return offset_; }

  void next() {
    for (int64_t d = static_cast<int64_t>(dims_.size()) - 1; d >= 0; --d) {
      offset_ += dims_[d].second;
      if (++index_[d] < dims_[d].first) return;
      offset_ -= index_[d] * dims_[d].second;
      index_[d] = 0;
    }
  }

 private:
  const std::vector<std::pair<int64_t, int64_t>>& dims_;
  std::vector<int64_t> index_;
  int64_t offset_ = 0;
};

// Some dimensions of a tensor as cells of `run_bytes` contiguous bytes each.
struct ByteRuns {
  int64_t run_bytes;
  Cells cells;

  ByteRuns(const at::Tensor& t, const std::vector<int64_t>& which) : run_bytes(t.element_size()), cells(t, which) {
    if (!cells.dims.empty() && cells.dims.back().second == run_bytes) {
      run_bytes *= cells.dims.back().first;
      cells.dims.pop_back();
    }
  }
};

// memcpy, with the sizes of single elements spelled out so that a strided copy is one move each.
inline void copy_bytes(char* dst, const char* src, int64_t n) {
  switch (n) {
    case 1: std::memcpy(dst, src, 1); break;
    case 2: std::memcpy(dst, src, 2); break;
    case 4: std::memcpy(dst, src, 4); break;
    case 8: std::memcpy(dst, src, 8); break;
    case 16: std::memcpy(dst, src, 16); break;
    default: std::memcpy(dst, src, n);
  }
}

}  // namespace specalign
