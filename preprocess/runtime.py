"""Device and precision selection for the torch models.

The same commands run on a GPU cluster (half precision, where 7B captioners fit and are fast) and on a
laptop CPU or CI (float32: half-precision matmuls are slow or unsupported there).
"""

from __future__ import annotations

import argparse

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def add_device_args(parser: argparse.ArgumentParser, half_on_gpu: bool) -> None:
  """--device and --dtype; `half_on_gpu` says whether "auto" means float16 on CUDA (large models)."""
  parser.add_argument(
      "--device", default="auto", help='"auto" (cuda if available, else cpu), "cpu", "cuda:1", ...'
  )
  auto = "float16 on CUDA, float32 on CPU" if half_on_gpu else "float32"
  parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=f'"auto": {auto}')
  parser.set_defaults(half_on_gpu=half_on_gpu)


def resolve(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
  device = torch.device(
      ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
  )
  if args.dtype != "auto":
    return device, DTYPES[args.dtype]
  return device, torch.float16 if (args.half_on_gpu and device.type == "cuda") else torch.float32
