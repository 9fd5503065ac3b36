r"""CLI: CLIP image features per 2 s clip, for running LMR on your own videos.

    python -m preprocess.clip_features --videos DIR --clip openai/clip-vit-base-patch32 --out FEAT_ROOT \
        [--annotations ...] [--frames_per_clip 1] [--shard I --num_shards N]

Writes clip_features/{vid}.npz, "features" float32 (L, 512 for ViT-B/32): per clip, the projected CLIP
image embedding (not L2-normalised; the data loaders normalise) averaged over the clip's sampled frames.
The default of one frame per clip, at its middle, matches Moment-DETR's extractor (CLIP at 0.5 fps), which
produced the QVHighlights release features; more frames average out motion within a clip.
"""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import torch
from absl import flags
from transformers import AutoImageProcessor, CLIPModel

from lmr_jax import cli
from preprocess import io_utils, runtime, video_io

logger = logging.getLogger("preprocess.clip_features")


def _define_flags(flag_values) -> None:
  io_utils.define_video_flags(flag_values, verb="encode")
  flags.DEFINE_string(
      "clip", None, "CLIP checkpoint (hub id or directory)", flag_values=flag_values, required=True
  )
  flags.DEFINE_float("clip_len", 2.0, "seconds per clip", flag_values=flag_values)
  flags.DEFINE_integer("frames_per_clip", 1, "frames averaged per clip", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 64, "clips per forward pass", flag_values=flag_values)
  io_utils.define_run_flags(flag_values)
  runtime.define_device_flags(flag_values, half_on_gpu=False)


class ClipImageEncoder:
  """CLIP's image tower with projection; image preprocessing on the PIL backend on every machine."""

  def __init__(self, checkpoint: str, device: torch.device, dtype: torch.dtype):
    self.processor = AutoImageProcessor.from_pretrained(checkpoint, backend="pil")
    self.model = CLIPModel.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    self.device, self.dtype = device, dtype

  @torch.inference_mode()
  def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
    """clips: (frames, H, W, 3) uint8 arrays with equal frame counts -> float32 (clips, dim)."""
    frames = [frame for clip in clips for frame in clip]
    pixels = self.processor(frames, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
    embeds = self.model.get_image_features(pixel_values=pixels).pooler_output
    return embeds.float().reshape(len(clips), len(clips[0]), -1).mean(1).cpu().numpy()


def main(argv: list[str] | None = None) -> int:
  return cli.run_command(_define_flags, _encode_all, __doc__, argv)


def _encode_all(args: types.SimpleNamespace) -> int:
  return video_io.encode_videos(
      args,
      "clip_features",
      load=lambda: ClipImageEncoder(
          args.clip, *runtime.resolve(args.device, args.dtype, half_on_gpu=False)
      ),
      open_clips=lambda path: video_io.ClipReader(path, args.clip_len, args.frames_per_clip),
      logger=logger,
  )


if __name__ == "__main__":
  sys.exit(main())
