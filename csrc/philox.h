// Counter-based randomness shared bit for bit with the Triton kernels and the PyTorch reference
// (python/specalign/reference.py): Philox-4x32-10 keyed by the row seed, counter
// (vocab index, position low word, stream, position high word), first output word -> u in (0, 1).
#pragma once
#include <cstdint>
#include <cmath>

namespace specalign {

constexpr uint32_t kStreamNoise = 0;   // per-token exponentials of categorical draws
constexpr uint32_t kStreamAccept = 1;  // acceptance uniform of a draft position (vocab index 0)

inline uint32_t philox_first_word(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * c0;
    const uint64_t p1 = uint64_t{0xCD9E8D57u} * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// Exact in float32: (2m + 1) * 2^-24 with m < 2^23.
inline float uniform(int64_t seed, int64_t position, uint32_t vocab_index, uint32_t stream) {
  const uint64_t pos = static_cast<uint64_t>(position);
  const uint32_t x = philox_first_word(static_cast<uint64_t>(seed), vocab_index, static_cast<uint32_t>(pos),
                                       stream, static_cast<uint32_t>(pos >> 32));
  return static_cast<float>((x >> 9) * 2u + 1u) * 0x1p-24f;
}

}  // namespace specalign
