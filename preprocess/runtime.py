"""Device and precision selection for the torch models.

The same commands run on a GPU cluster (half precision, where 7B captioners fit and are fast) and on a
laptop CPU or CI (float32: half-precision matmuls are slow or unsupported there).
"""

from __future__ import annotations

import torch
from absl import flags

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def define_device_flags(flag_values, *, half_on_gpu: bool) -> None:
  """--device and --dtype; ``half_on_gpu`` (large models) says in --help that "auto" is float16 on
  CUDA, as ``resolve`` makes it for them."""
  auto = "float16 on CUDA, float32 on CPU" if half_on_gpu else "float32"
  flags.DEFINE_string(
      "device",
      "auto",
      '"auto" (cuda if available, else cpu), "cpu", "cuda:1", ...',
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "dtype",
      "auto",
      ["auto", *DTYPES],
      f'"auto": {auto}',
      flag_values=flag_values,
  )


def resolve(device: str, dtype: str, *, half_on_gpu: bool) -> tuple[torch.device, torch.dtype]:
  """The torch device and dtype of ``--device`` and ``--dtype``; ``half_on_gpu`` says whether
  "auto" means float16 on CUDA (large models)."""
  torch_device = torch.device(
      ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
  )
  if dtype != "auto":
    return torch_device, DTYPES[dtype]
  half = half_on_gpu and torch_device.type == "cuda"
  return torch_device, torch.float16 if half else torch.float32
