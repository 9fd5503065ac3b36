"""Transformer building blocks of LMR: post-norm attention blocks without FFN expansion (paper IV-B)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """Fixed sine/cosine position codes (length, dim), as DETR-style video models use."""
  positions = np.arange(length, dtype=np.float32)[:, None]
  freqs = np.exp(-np.log(10000.0) * np.arange(0, dim, 2, dtype=np.float32) / dim)
  codes = np.zeros((length, dim), np.float32)
  codes[:, 0::2] = np.sin(positions * freqs)
  codes[:, 1::2] = np.cos(positions * freqs)
  return codes


def sine_embed_spans(spans_BxKx2: jnp.ndarray, dim: int) -> jnp.ndarray:
  """Sine/cosine codes of (center, width) in [0, 1], dim/2 per coordinate (DAB-DETR's anchor code)."""
  half = dim // 2
  freqs = 10000.0 ** (2 * (jnp.arange(half) // 2) / half)
  angles = spans_BxKx2[..., None] * 2 * jnp.pi / freqs  # (B, K, 2, half)
  codes = jnp.where(jnp.arange(half) % 2 == 0, jnp.sin(angles), jnp.cos(angles))
  return codes.reshape(spans_BxKx2.shape[:-1] + (2 * half,))


def inverse_sigmoid(x: jnp.ndarray, eps: float = 1e-3) -> jnp.ndarray:
  x = jnp.clip(x, eps, 1 - eps)
  return jnp.log(x / (1 - x))


class InputProjection(nn.Module):
  """Two LayerNorm -> Dropout -> Dense stages mapping one feature stream to the hidden width."""

  hidden_dim: int
  input_dropout: float
  dropout: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.LayerNorm()(x)
    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.hidden_dim)(x))
    x = nn.LayerNorm()(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.hidden_dim)(x)


class FeedForward(nn.Module):
  ffn_dim: int
  dropout: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = nn.relu(nn.Dense(self.ffn_dim)(x))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return nn.Dense(x.shape[-1])(y)


class AttentionBlock(nn.Module):
  """Attention (self or cross) then feed-forward, each with residual and LayerNorm (post-norm).

  Position codes are added to queries and keys only, as in DETR, so values stay content-only.
  """

  num_heads: int
  ffn_dim: int
  dropout: float
  with_ffn: bool = True

  @nn.compact
  def __call__(self, x_BxQxD, kv_BxKxD, mask_BxQxK, *, train: bool, pos_q=0.0, pos_k=0.0):
    attn = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dropout_rate=self.dropout, deterministic=not train
    )(x_BxQxD + pos_q, kv_BxKxD + pos_k, kv_BxKxD, mask=mask_BxQxK[:, None])
    x = nn.LayerNorm()(x_BxQxD + nn.Dropout(self.dropout, deterministic=not train)(attn))
    if not self.with_ffn:
      return x
    y = FeedForward(self.ffn_dim, self.dropout)(x, train=train)
    return nn.LayerNorm()(x + nn.Dropout(self.dropout, deterministic=not train)(y))


def attention_mask(q_mask_BxQ: jnp.ndarray, k_mask_BxK: jnp.ndarray) -> jnp.ndarray:
  """Keys are masked; padded query rows attend to everything (their outputs are never used)."""
  return jnp.broadcast_to(k_mask_BxK[:, None, :], q_mask_BxQ.shape + k_mask_BxK.shape[-1:])


class MLP(nn.Module):
  hidden_dim: int
  out_dim: int
  num_layers: int

  @nn.compact
  def __call__(self, x):
    for _ in range(self.num_layers - 1):
      x = nn.relu(nn.Dense(self.hidden_dim)(x))
    return nn.Dense(self.out_dim)(x)
