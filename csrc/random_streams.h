// The random streams shared bit for bit with the Triton kernels and the PyTorch reference; the
// constants mirror python/specalign/random_streams.py. Philox-4x32-10 keyed by the row seed, counter
// (vocab index, position low word, stream, position high word), first output word x ->
// u = (2 * (x >> 9) + 1) * 2^-24 in (0, 1), exact in float32.
#pragma once
#include <cstdint>

namespace specalign {

constexpr uint32_t kStreamNoise = 0;   // per-token exponentials of categorical draws
constexpr uint32_t kStreamAccept = 1;  // acceptance uniform of a draft position (vocab index 0)

constexpr int kPhiloxRounds = 10;
constexpr uint64_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // key schedule increments

// The key schedule and fixed counter words of one (seed, position, stream): only the vocab index
// varies along a row.
struct StreamKey {
  uint64_t round_key0[kPhiloxRounds], round_key1[kPhiloxRounds];
  uint64_t position_lo, position_hi, stream;

  StreamKey(int64_t seed, int64_t position, uint32_t stream_id) {
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
    for (int round = 0; round < kPhiloxRounds; ++round, k0 += kPhiloxW0, k1 += kPhiloxW1) {
      round_key0[round] = k0;
      round_key1[round] = k1;
    }
    position_lo = static_cast<uint32_t>(position);
    position_hi = static_cast<uint32_t>(static_cast<uint64_t>(position) >> 32);
    stream = stream_id;
  }
};

// u of vocab indices [first, first + count). The 32-bit words ride in 64-bit lanes so that each
// 32x32->64 product is a single vector multiply; the upper halves carry garbage that no multiply
// and no output reads.
inline void philox_uniforms(const StreamKey& key, int64_t first, int64_t count, float* u) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    uint64_t c0 = static_cast<uint64_t>(first + i), c1 = key.position_lo, c2 = key.stream, c3 = key.position_hi;
    for (int round = 0; round < kPhiloxRounds; ++round) {
      const uint64_t p0 = (c0 & 0xFFFFFFFFu) * kPhiloxM0;
      const uint64_t p1 = (c2 & 0xFFFFFFFFu) * kPhiloxM1;
      c0 = (p1 >> 32) ^ c1 ^ key.round_key0[round];
      c2 = (p0 >> 32) ^ c3 ^ key.round_key1[round];
      c1 = p1;
      c3 = p0;
    }
    u[i] = static_cast<float>(static_cast<int32_t>((static_cast<uint32_t>(c0) >> 9) * 2u + 1u)) * 0x1p-24f;
  }
}

// One uniform of (seed, position, vocab index, stream).
inline float uniform(int64_t seed, int64_t position, int64_t vocab_index, uint32_t stream) {
  float u;
  philox_uniforms(StreamKey(seed, position, stream), vocab_index, 1, &u);
  return u;
}

}  // namespace specalign
