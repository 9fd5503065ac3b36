"""SlowFast R50 8x8 (Kinetics-400), the network behind the QVHighlights release's SlowFast features.

The release features (Moment-DETR, QVHighlights) come from HERO_Video_Feature_Extractor's SlowFast
part: PySlowFast's ``SLOWFAST_8x8_R50`` with the model zoo's Caffe2 checkpoint
``SLOWFAST_8x8_R50.pkl``, its classifier dropped, the two pathways' last feature maps averaged over
time and space and concatenated, slow first: 2048 + 256 = 2304 values per clip (docs/preprocess.md
has the whole recipe and its sources). This module is that network, written here so that no
unmaintained video package is needed; its parameter names are PySlowFast's (``s1.pathway0_stem.conv``,
``s2.pathway1_res0.branch2.a_bn``, ``s1_fuse.conv_f2s``, ...), so PySlowFast's own ``.pyth``
checkpoints load as they are and the Caffe2 ``.pkl`` loads through a name conversion.

Layout: slow pathway 8 frames, fast pathway 32 (alpha 4), fast channels 1/8 of slow (beta), fast-to-slow
fusion by a (7, 1, 1) convolution of stride alpha after the stem and res2-res4; ResNet-50 bottlenecks,
temporal kernel 3 in conv_a of the fast pathway everywhere and of the slow one in res4-res5 only.
"""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import torch
from torch import nn

from lmr_jax.errors import LmrError

ALPHA = 4  # fast frames per slow frame
BETA_INV = 8  # slow channels per fast channel
FUSION_RATIO = 2  # fusion conv output channels per fast channel
FUSION_KERNEL = 7
WIDTH = 64  # slow stem channels (ResNet-50, one group)
BLOCKS = (3, 4, 6, 3)  # res2..res5
# conv_a's temporal kernel per stage (stem, res2..res5), (slow, fast)
TEMPORAL_KERNELS = ((1, 5), (1, 3), (1, 3), (3, 3), (3, 3))
FEATURE_DIM = WIDTH * 32 + WIDTH * 32 // BETA_INV  # 2304


class _Stem(nn.Module):
  """One pathway's stem: a (t, 7, 7) convolution of spatial stride 2, then a 3x3 max pool."""

  def __init__(self, dim_out: int, temporal: int):
    super().__init__()
    self.conv = nn.Conv3d(
        3, dim_out, (temporal, 7, 7), (1, 2, 2), (temporal // 2, 3, 3), bias=False
    )
    self.bn = nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1)
    self.pool_layer = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))

  def forward(self, x):
    return self.pool_layer(torch.relu(self.bn(self.conv(x))))


class _Bottleneck(nn.Module):
  """conv_a (t, 1, 1), conv_b (1, 3, 3) with the stage's spatial stride, conv_c (1, 1, 1)."""

  def __init__(self, dim_in, dim_inner, dim_out, *, temporal, stride):
    super().__init__()
    self.a = nn.Conv3d(dim_in, dim_inner, (temporal, 1, 1), 1, (temporal // 2, 0, 0), bias=False)
    self.a_bn = nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1)
    self.b = nn.Conv3d(dim_inner, dim_inner, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
    self.b_bn = nn.BatchNorm3d(dim_inner, eps=1e-5, momentum=0.1)
    self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
    self.c_bn = nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1)

  def forward(self, x):
    x = torch.relu(self.a_bn(self.a(x)))
    x = torch.relu(self.b_bn(self.b(x)))
    return self.c_bn(self.c(x))


class _ResBlock(nn.Module):

  def __init__(self, dim_in, dim_inner, dim_out, *, temporal, stride):
    super().__init__()
    self.branch2 = _Bottleneck(dim_in, dim_inner, dim_out, temporal=temporal, stride=stride)
    self.projects = dim_in != dim_out or stride != 1
    if self.projects:
      self.branch1 = nn.Conv3d(dim_in, dim_out, 1, (1, stride, stride), bias=False)
      self.branch1_bn = nn.BatchNorm3d(dim_out, eps=1e-5, momentum=0.1)

  def forward(self, x):
    shortcut = self.branch1_bn(self.branch1(x)) if self.projects else x
    return torch.relu(shortcut + self.branch2(x))


class _Fuse(nn.Module):
  """Fast-to-slow fusion: the fast maps, strided in time to the slow rate, joined to the slow ones."""

  def __init__(self, fast_dim: int):
    super().__init__()
    self.conv_f2s = nn.Conv3d(
        fast_dim,
        fast_dim * FUSION_RATIO,
        (FUSION_KERNEL, 1, 1),
        (ALPHA, 1, 1),
        (FUSION_KERNEL // 2, 0, 0),
        bias=False,
    )
    self.bn = nn.BatchNorm3d(fast_dim * FUSION_RATIO, eps=1e-5, momentum=0.1)

  def forward(self, slow, fast):
    return torch.cat([slow, torch.relu(self.bn(self.conv_f2s(fast)))], 1), fast


class SlowFastR50(nn.Module):
  """SlowFast R50 8x8 up to its pooled features: ``(slow_BxCx8xHxW, fast_BxCx32xHxW)`` ->
  ``(B, 2304)``, the slow pathway's 2048 averages then the fast pathway's 256."""

  def __init__(self):
    super().__init__()
    fast_width = WIDTH // BETA_INV
    self.s1 = nn.Module()
    self.s1.pathway0_stem = _Stem(WIDTH, TEMPORAL_KERNELS[0][0])
    self.s1.pathway1_stem = _Stem(fast_width, TEMPORAL_KERNELS[0][1])
    self.s1_fuse = _Fuse(fast_width)
    slow_in, fast_in = WIDTH + fast_width * FUSION_RATIO, fast_width
    for stage, blocks in enumerate(BLOCKS):
      number = stage + 2  # res2..res5
      slow_out = WIDTH * 4 * 2**stage
      stride = 1 if stage == 0 else 2
      module = nn.Module()
      for pathway, (dim_in, dim_out) in enumerate(
          [(slow_in, slow_out), (fast_in, slow_out // BETA_INV)]
      ):
        for i in range(blocks):
          block = _ResBlock(
              dim_in if i == 0 else dim_out,
              dim_out // 4,
              dim_out,
              temporal=TEMPORAL_KERNELS[number - 1][pathway],
              stride=stride if i == 0 else 1,
          )
          setattr(module, f"pathway{pathway}_res{i}", block)
      setattr(self, f"s{number}", module)
      if number < 5:
        setattr(self, f"s{number}_fuse", _Fuse(slow_out // BETA_INV))
      slow_in = slow_out + slow_out // BETA_INV * FUSION_RATIO
      fast_in = slow_out // BETA_INV

  def forward(self, slow, fast):
    slow, fast = self.s1.pathway0_stem(slow), self.s1.pathway1_stem(fast)
    slow, fast = self.s1_fuse(slow, fast)
    for number, blocks in zip(range(2, 6), BLOCKS):
      stage = getattr(self, f"s{number}")
      for i in range(blocks):
        slow = getattr(stage, f"pathway0_res{i}")(slow)
        fast = getattr(stage, f"pathway1_res{i}")(fast)
      if number < 5:
        slow, fast = getattr(self, f"s{number}_fuse")(slow, fast)
    # The release's head: an average over all of res5's time and space (8x7x7 and 32x7x7 at 224
    # pixels), no classifier.
    return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], 1)


# Caffe2 blob name -> PySlowFast parameter name, tried in order (the model zoo's .pkl files name
# their blobs this way; "t_" marks the fast pathway). Suffixes: _w weight, _b bias, and for batch
# norms _s scale, _b shift, _rm running mean, _riv running variance.
_BN_SUFFIXES = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_CAFFE2_NAMES = (
    (r"t_pool1_subsample_bn_(s|b|rm|riv)", lambda m: f"s1_fuse.bn.{_BN_SUFFIXES[m[1]]}"),
    (r"t_pool1_subsample_w", lambda m: "s1_fuse.conv_f2s.weight"),
    (
        r"t_res(\d)_\d+_branch2c_bn_subsample_bn_(s|b|rm|riv)",
        lambda m: f"s{m[1]}_fuse.bn.{_BN_SUFFIXES[m[2]]}",
    ),
    (r"t_res(\d)_\d+_branch2c_bn_subsample_w", lambda m: f"s{m[1]}_fuse.conv_f2s.weight"),
    (r"(t_)?conv1_w", lambda m: f"s1.pathway{int(bool(m[1]))}_stem.conv.weight"),
    (
        r"(t_)?res_conv1_bn_(s|b|rm|riv)",
        lambda m: f"s1.pathway{int(bool(m[1]))}_stem.bn.{_BN_SUFFIXES[m[2]]}",
    ),
    (
        r"(t_)?res(\d)_(\d+)_branch2([abc])_w",
        lambda m: f"s{m[2]}.pathway{int(bool(m[1]))}_res{m[3]}.branch2.{m[4]}.weight",
    ),
    (
        r"(t_)?res(\d)_(\d+)_branch2([abc])_bn_(s|b|rm|riv)",
        lambda m: (
            f"s{m[2]}.pathway{int(bool(m[1]))}_res{m[3]}.branch2.{m[4]}_bn.{_BN_SUFFIXES[m[5]]}"
        ),
    ),
    (
        r"(t_)?res(\d)_(\d+)_branch1_w",
        lambda m: f"s{m[2]}.pathway{int(bool(m[1]))}_res{m[3]}.branch1.weight",
    ),
    (
        r"(t_)?res(\d)_(\d+)_branch1_bn_(s|b|rm|riv)",
        lambda m: f"s{m[2]}.pathway{int(bool(m[1]))}_res{m[3]}.branch1_bn.{_BN_SUFFIXES[m[4]]}",
    ),
)
# Blobs of the training run, not of the network: the classifier, optimizer state, counters.
_CAFFE2_SKIPPED = re.compile(r"^pred_|_momentum$|^lr$|model_iter|^nonlocal")


class CheckpointError(LmrError):
  """A SlowFast checkpoint that cannot be loaded; the message names the file."""


def caffe2_name(blob: str) -> str | None:
  """The PySlowFast parameter a Caffe2 blob holds (None for blobs the features do not use)."""
  if _CAFFE2_SKIPPED.search(blob):
    return None
  for pattern, name in _CAFFE2_NAMES:
    match = re.fullmatch(pattern, blob)
    if match:
      return name(match)
  return None


def _caffe2_state(path: str) -> dict[str, torch.Tensor]:
  """The PySlowFast state of a model zoo ``.pkl`` (a pickle of {"blobs": {name: ndarray}})."""
  try:
    with open(path, "rb") as f:
      blobs = pickle.load(f, encoding="latin1")["blobs"]
  except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
    raise CheckpointError(
        f"{path}: not a Caffe2 model zoo checkpoint ({type(e).__name__})"
    ) from None
  state = {}
  for blob, value in blobs.items():
    name = caffe2_name(blob)
    if name is not None:
      state[name] = torch.from_numpy(np.asarray(value, np.float32))
  return state


def _pytorch_state(path: str) -> dict[str, torch.Tensor]:
  """The state of a PySlowFast ``.pyth`` ({"model_state": ...}), or a bare state dict."""
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
    raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from None
  state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: no model_state in the checkpoint")
  return {k: v for k, v in state.items() if not k.startswith("head.")}


def load(path: str | os.PathLike) -> SlowFastR50:
  """The network with the weights of ``path``: the model zoo's Caffe2 ``SLOWFAST_8x8_R50.pkl`` (the
  release's) or a PySlowFast ``.pyth``; in eval mode. Every parameter and batch-norm statistic must
  be in the file, with its shape (the classifier is not needed)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such checkpoint file")
  state = _caffe2_state(path) if path.endswith(".pkl") else _pytorch_state(path)
  model = SlowFastR50()
  expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
  missing = sorted(set(expected) - set(state))
  if missing:
    raise CheckpointError(
        f"{path}: {len(missing)} of the network's {len(expected)} tensors are not in the "
        f"checkpoint (first: {missing[0]}); is it SlowFast R50 8x8?"
    )
  for name, tensor in expected.items():
    if tuple(state[name].shape) != tuple(tensor.shape):
      raise CheckpointError(
          f"{path}: {name} has shape {tuple(state[name].shape)}, SlowFast R50 8x8 has "
          f"{tuple(tensor.shape)}"
      )
  model.load_state_dict({k: state[k] for k in expected}, strict=False)
  return model.eval()
