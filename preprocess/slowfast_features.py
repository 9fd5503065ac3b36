r"""CLI: SlowFast features per 2 s clip, as the QVHighlights release's, for your own videos.

    python -m preprocess.slowfast_features --videos DIR --checkpoint SLOWFAST_8x8_R50.pkl \
        --out FEAT_ROOT [--annotations ...] [--batch_size 8] [--shard I --num_shards N]

Writes slowfast_features/{vid}.npz, "features" float16 (L, 2304), one row per clip of the same clip plan
as clip_features and the captions (so the streams line up), with the recipe of the extractor that
produced the release (HERO_Video_Feature_Extractor's SlowFast part; docs/preprocess.md): per clip, 32
frames at the indices that extractor takes from the clip's 60 frames at 30 fps (which depend on the
source's frame rate), each resized to a short side of 224 (bicubic) and centre-cropped to 224x224,
scaled to [0, 1] and normalised with mean 0.45 and std 0.225; the fast pathway reads the 32 frames, the
slow one 8 of them; the feature is the average of the slow pathway's last maps (2048) and of the fast
one's (256). --checkpoint is the model zoo's Caffe2 SLOWFAST_8x8_R50.pkl (the release's weights; a
pickle: load only files you trust) or a PySlowFast .pyth.
"""

from __future__ import annotations

import logging
import math
import sys
import types

import numpy as np
import torch
from absl import flags
from PIL import Image

from lmr_jax import cli
from preprocess import io_utils, runtime, video_io
from preprocess import slowfast as slowfast_lib

logger = logging.getLogger("preprocess.slowfast_features")

CLIP_LEN = 2.0  # seconds: the release's clips (and LMR's)
DECODE_FPS = 30  # the extractor resamples every video to this rate
# SLOWFAST_8x8: 32 fast frames spanning 64 frames at the source rate
NUM_FRAMES, SAMPLING_RATE = 32, 2
SIZE = 224
MEAN, STD = 0.45, 0.225
FEATURE_DTYPE = np.float16  # as the release's files
BATCH_SIZE = 8  # clips of 32 frames per forward pass


def frame_offsets(frame_rate: float, clip_len: float = CLIP_LEN) -> np.ndarray:
  """Seconds into a clip of the 32 frames the release's extractor takes. It indexes the clip's
  ``clip_len * 30`` frames at 30 fps with ``linspace(0, 64 * floor(fps) / 30 - 1, 32)``, clamped to
  the clip and truncated, where fps is the *source* file's rate: at 30 fps the frames span the whole
  clip (the last two repeat its last frame), at 25 fps only its first 1.75 s."""
  frames = int(round(clip_len * DECODE_FPS))
  span = NUM_FRAMES * SAMPLING_RATE * math.floor(frame_rate) / DECODE_FPS
  index = np.clip(np.linspace(0.0, span - 1, NUM_FRAMES), 0, frames - 1).astype(np.int64)
  return index / DECODE_FPS


def preprocess_frames(frames: np.ndarray) -> torch.Tensor:
  """uint8 (T, H, W, 3) frames -> float32 (3, T, 224, 224): short side to 224 (bicubic), the centre
  224x224, scaled to [0, 1] and normalised."""
  height, width = frames.shape[1:3]
  if height <= width:
    size = (int(width * SIZE / height), SIZE)  # PIL's (width, height)
  else:
    size = (SIZE, int(height * SIZE / width))
  left, top = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
  crops = [
      np.asarray(
          Image.fromarray(frame)
          .resize(size, Image.BICUBIC)
          .crop((left, top, left + SIZE, top + SIZE))
      )
      for frame in frames
  ]
  pixels = torch.from_numpy(np.stack(crops)).float().div_(255.0)
  return ((pixels - MEAN) / STD).permute(3, 0, 1, 2)


def slow_indices(num_frames: int = NUM_FRAMES) -> torch.Tensor:
  """The fast frames the slow pathway reads: ``linspace(0, T - 1, T // alpha)`` truncated
  ([0, 4, 8, 13, 17, 22, 26, 31] for 32)."""
  return torch.linspace(0, num_frames - 1, num_frames // slowfast_lib.ALPHA).long()


class SlowFastEncoder:
  """The network on a device; clips of 32 preprocessed frames in, (clips, 2304) float32 out."""

  def __init__(self, checkpoint: str, device: torch.device, dtype: torch.dtype):
    self.model = slowfast_lib.load(checkpoint).to(device, dtype)
    self.device, self.dtype = device, dtype

  @torch.inference_mode()
  def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
    fast = torch.stack([preprocess_frames(c) for c in clips]).to(self.device, self.dtype)
    slow = fast.index_select(2, slow_indices(fast.shape[2]).to(self.device))
    return self.model(slow, fast).float().cpu().numpy()


def _define_flags(flag_values) -> None:
  io_utils.define_video_flags(flag_values, verb="encode")
  flags.DEFINE_string(
      "checkpoint",
      None,
      "SlowFast R50 8x8 weights: the model zoo's SLOWFAST_8x8_R50.pkl (Caffe2) or a PySlowFast .pyth",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_integer("batch_size", BATCH_SIZE, "clips per forward pass", flag_values=flag_values)
  io_utils.define_run_flags(flag_values)
  runtime.define_device_flags(flag_values, half_on_gpu=False)


def main(argv: list[str] | None = None) -> int:
  return cli.run_command(_define_flags, _encode_all, __doc__, argv)


def _encode_all(args: types.SimpleNamespace) -> int:
  return video_io.encode_videos(
      args,
      "slowfast_features",
      load=lambda: SlowFastEncoder(
          args.checkpoint, *runtime.resolve(args.device, args.dtype, half_on_gpu=False)
      ),
      open_clips=lambda path: video_io.ClipReader(path, CLIP_LEN, offsets=frame_offsets),
      logger=logger,
      dtype=FEATURE_DTYPE,
  )


if __name__ == "__main__":
  sys.exit(main())
