"""The random streams every backend shares (specalign.random_streams, computed by specalign.reference):
Philox-4x32-10 and its uniforms."""
import pytest
import torch

from helpers import SIGNIFICANCE, chi_square_p_value
from specalign import random_streams, reference

MASK32 = 0xFFFFFFFF


def seed_from_key(k0, k1):
    """The int64 seed whose low and high 32-bit words are the Philox key words ``k0`` and ``k1``."""
    seed = (k1 << 32) | k0
    return torch.tensor(seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64)


# Random123 kat_vectors, philox4x32 10 rounds: (counter c0..c3, key k0 k1) -> first output word.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), 0x6627E8D5),
    ((MASK32, MASK32, MASK32, MASK32), (MASK32, MASK32), 0x408F276D),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), 0xD16CFE09),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    c0, c1, c2, c3 = counter
    word = reference.philox_uint32(seed_from_key(*key), torch.tensor(c0), torch.tensor(c1), c2, torch.tensor(c3))
    assert int(word) == expected


def test_philox_broadcasts_to_the_same_words_as_scalar_calls():
    seeds = torch.tensor([0, -1, 123456789012345, -(2**63)])
    vocab = torch.arange(5)
    words = reference.philox_uint32(seeds[:, None], vocab, torch.tensor(7), 1, torch.tensor(3))
    assert words.shape == (4, 5)
    for i, seed in enumerate(seeds):
        for v in range(5):
            single = reference.philox_uint32(seed, torch.tensor(v), torch.tensor(7), 1, torch.tensor(3))
            assert int(words[i, v]) == int(single)
    assert int(words.min()) >= 0 and int(words.max()) <= MASK32


def many_uniforms(count, stream):
    """``count`` uniforms over a grid of seeds x positions x vocab indices (positions cross 2**32)."""
    seeds = torch.randint(-(2**63), 2**63 - 1, (16,), generator=torch.Generator().manual_seed(stream), dtype=torch.int64)
    positions = torch.cat([torch.arange(0, 8), 2**32 - 4 + torch.arange(0, 8)])
    vocab = torch.arange(count // (seeds.numel() * positions.numel()))
    return reference.uniform(seeds[:, None, None], positions[None, :, None], vocab, stream)


@pytest.mark.parametrize("stream", [random_streams.NOISE, random_streams.ACCEPT])
def test_uniforms_lie_in_the_open_unit_interval_on_the_24_bit_grid(stream):
    u = many_uniforms(2**18, stream)
    assert u.dtype == torch.float32
    assert float(u.min()) > 0 and float(u.max()) < 1
    scaled = u.double() * 2**24
    assert torch.equal(scaled, scaled.round())
    assert bool((scaled.long() % 2 == 1).all())  # (2m + 1) * 2**-24


@pytest.mark.parametrize("stream", [random_streams.NOISE, random_streams.ACCEPT])
def test_uniforms_are_uniform(stream):
    bins = 64
    u = many_uniforms(2**20, stream).flatten()
    p_value = chi_square_p_value((u * bins).long(), torch.full((bins,), 1.0 / bins))
    assert p_value > SIGNIFICANCE, p_value


def test_neighbouring_vocab_indices_are_independent():
    """Pairs (u_v, u_{v+1}) fill a 16 x 16 grid uniformly: no correlation between adjacent counters."""
    bins = 16
    u = many_uniforms(2**20, random_streams.NOISE)
    cells = (u[..., :-1:2] * bins).long() * bins + (u[..., 1::2] * bins).long()
    p_value = chi_square_p_value(cells.flatten(), torch.full((bins * bins,), 1.0 / bins**2))
    assert p_value > SIGNIFICANCE, p_value


def test_every_key_and_counter_part_changes_the_stream():
    base = dict(seed=torch.tensor(11), position=torch.tensor(5), vocab_index=torch.arange(256), stream=random_streams.NOISE)
    u = reference.uniform(**base)
    variants = {
        "seed low word": dict(base, seed=torch.tensor(12)),
        "seed high word": dict(base, seed=torch.tensor(11 + 2**32)),
        "position low word": dict(base, position=torch.tensor(6)),
        "position high word": dict(base, position=torch.tensor(5 + 2**32)),
        "stream": dict(base, stream=random_streams.ACCEPT),
        "vocab index": dict(base, vocab_index=torch.arange(1, 257)),
    }
    for name, arguments in variants.items():
        other = reference.uniform(**arguments)
        assert int((other == u).sum()) <= 2, f"changing the {name} left the stream nearly unchanged"


def test_streams_do_not_depend_on_batch_composition():
    seeds = torch.tensor([3, -7, 2**40 + 1, 3, 99])
    positions = torch.tensor([0, 17, 2**32 - 1, 1, 5])
    noise = reference.exponential_noise(seeds, positions, 300)
    for b in range(seeds.numel()):
        alone = reference.exponential_noise(seeds[b : b + 1], positions[b : b + 1], 300)
        assert torch.equal(alone[0], noise[b])
    order = torch.tensor([4, 2, 0, 3, 1])
    assert torch.equal(reference.exponential_noise(seeds[order], positions[order], 300), noise[order])
    # The first 100 vocabulary entries do not depend on the vocabulary size either.
    assert torch.equal(reference.exponential_noise(seeds, positions, 100), noise[:, :100])


def test_exponential_noise_is_minus_log_of_the_noise_stream():
    seeds, positions = torch.tensor([5, 6]), torch.tensor([9, 2**33])
    noise = reference.exponential_noise(seeds, positions, 50)
    u = reference.uniform(seeds[:, None], positions[:, None], torch.arange(50), random_streams.NOISE)
    assert torch.equal(noise, -torch.log(u))
    assert bool((noise > 0).all()) and bool(torch.isfinite(noise).all())
