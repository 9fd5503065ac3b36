r"""CLI: CLIP image features per 2 s clip, for running LMR on your own videos.

    python -m preprocess.clip_features --videos DIR --clip openai/clip-vit-base-patch32 --out FEAT_ROOT \
        [--annotations ...] [--frames_per_clip 1] [--shard I --num_shards N]

Writes clip_features/{vid}.npz, "features" float32 (L, 512 for ViT-B/32): per clip, the projected CLIP
image embedding (not L2-normalised; the data loaders normalise) averaged over the clip's sampled frames.
The default of one frame per clip, at its middle, matches Moment-DETR's extractor (CLIP at 0.5 fps), which
produced the QVHighlights release features; more frames average out motion within a clip.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, CLIPModel

from preprocess import io_utils, runtime
from preprocess.video_io import ClipReader, select_videos

logger = logging.getLogger("preprocess.clip_features")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m preprocess.clip_features",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
      "--videos", required=True, type=Path, help="directory of {vid}.mp4 (or .mkv, .webm, ...)"
  )
  p.add_argument(
      "--annotations", nargs="*", default=[], help="jsonl files; if given, encode only their vids"
  )
  p.add_argument("--clip", required=True, help="CLIP checkpoint (hub id or directory)")
  p.add_argument("--clip_len", type=float, default=2.0, help="seconds per clip")
  p.add_argument("--frames_per_clip", type=int, default=1, help="frames averaged per clip")
  p.add_argument("--batch_size", type=int, default=64, help="clips per forward pass")
  io_utils.add_run_args(p)
  runtime.add_device_args(p, half_on_gpu=False)
  return p.parse_args(argv)


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
  args = parse_args(argv)
  io_utils.setup_logging(args.log_level)
  videos = select_videos(args.videos, args.annotations)
  vids = io_utils.shard_keys(videos, args.shard, args.num_shards)
  logger.info("shard %d/%d: %d of %d videos", args.shard, args.num_shards, len(vids), len(videos))

  def out_path(vid: str) -> Path:
    return args.out / "clip_features" / f"{vid}.npz"

  def load() -> ClipImageEncoder:
    return ClipImageEncoder(args.clip, *runtime.resolve(args))

  def work(vid: str, encoder: ClipImageEncoder) -> None:
    if videos[vid] is None:
      raise FileNotFoundError(f"no video file for {vid} in {args.videos}")
    with ClipReader(videos[vid], args.clip_len, args.frames_per_clip) as clips:
      features = np.concatenate(
          [encoder(batch) for batch in io_utils.batched(clips, args.batch_size)]
      )
    io_utils.save_npz(out_path(vid), features=features)

  report = io_utils.run_keys("clip_features", vids, out_path, load, work=work, logger=logger)
  return io_utils.summarize([report], logger)


if __name__ == "__main__":
  sys.exit(main())
