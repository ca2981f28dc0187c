"""Philox4x32-10 and the coalition rule of docs/banzhaf.md, in plain torch (the oracle's random numbers).

Counter-based: the coalition of pair b in sample s depends only on (seed, s, b), never on the order in
which a backend draws it, so every backend reproduces the same coalitions from the same seed.
"""

import torch

MASK32 = 0xFFFFFFFF
MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
WEYL = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10


def _mulhilo(multiplier: int, value: torch.Tensor):
    """(high, low) 32-bit halves of multiplier * value, value an int64 tensor of uint32 values.

    int64 cannot hold a 64-bit product, so the multiplier is split into 16-bit halves."""
    m_low, m_high = multiplier & 0xFFFF, multiplier >> 16
    p_low = value * m_low  # < 2^48
    p_high = value * m_high  # < 2^48
    partial = p_low + ((p_high & 0xFFFF) << 16)  # < 2^49
    return (p_high >> 16) + (partial >> 32), partial & MASK32


def philox4x32_10(counter, key):
    """counter: four int64 tensors (broadcastable) of uint32 values; key: two Python ints.
    Returns the four output words as int64 tensors."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(MULTIPLIERS[0], c0)
        hi1, lo1 = _mulhilo(MULTIPLIERS[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + WEYL[0]) & MASK32, (k1 + WEYL[1]) & MASK32
    return c0, c1, c2, c3


def coalition_bits(seed: int, samples, batch: int, num_players: int, device=None) -> torch.Tensor:
    """Bool tensor [len(samples), batch, num_players]: player k of pair b in sample s is in the coalition
    when bit (k mod 32) of word ((k div 32) mod 4) of Philox(counter=(s, b, k div 128, 0),
    key=(seed low 32 bits, seed high 32 bits)) is 1. Masking of padded players is the caller's."""
    samples = torch.as_tensor(samples, dtype=torch.int64, device=device)
    num_blocks = (num_players + 127) // 128
    s = samples.view(-1, 1, 1)
    b = torch.arange(batch, dtype=torch.int64, device=device).view(1, -1, 1)
    block = torch.arange(num_blocks, dtype=torch.int64, device=device).view(1, 1, -1)
    words = torch.stack(philox4x32_10((s, b, block, 0), (seed & MASK32, (seed >> 32) & MASK32)), dim=-1)
    words = words.flatten(-2)  # [S, B, 4 * blocks]: word w of the flattened list holds players 32w..32w+31
    player = torch.arange(num_players, dtype=torch.int64, device=device)
    chosen = words[..., player // 32]
    return ((chosen >> (player % 32)) & 1).bool()


def coalitions(seed: int, samples, text_mask: torch.Tensor, video_mask: torch.Tensor):
    """(in_text [S, B, T], in_video [S, B, V]) bool: the sampled coalitions, padded players never in."""
    batch, num_words = text_mask.shape
    num_frames = video_mask.shape[1]
    bits = coalition_bits(seed, samples, batch, num_words + num_frames, device=text_mask.device)
    return bits[..., :num_words] & text_mask, bits[..., num_words:] & video_mask
