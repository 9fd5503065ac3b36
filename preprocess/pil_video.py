"""A torchvision-free stand-in for transformers' video processors.

In transformers 5.x every video processor (and so every processor with a `video_processor`, such as
`LlavaNextVideoProcessor`) requires torchvision, and the CPU build of torch this package pins has no
matching torchvision wheel. The video processors of the supported checkpoints treat a video as a stack of
independently resized, cropped, rescaled and normalised frames, which transformers' PIL image backend does
as well. `PilVideoProcessor` applies the checkpoint's saved video-processor settings (falling back to the
reference class's defaults for keys the file omits) frame by frame with that backend, and returns the key
the model expects. The same code runs on CPU and GPU, so captions do not depend on whether torchvision is
installed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from transformers import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.video_processing_utils import VideoProcessorMixin

# The per-frame settings a video processor config can carry that the PIL backend implements.
FRAME_KEYS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "default_to_square",
)


class PilVideoProcessor(VideoProcessorMixin):
  """Frame-wise video preprocessing with the settings of `reference` (a transformers video processor class).

  `reference` is only read for its class-level defaults and output name; it is never instantiated.
  """

  def __init__(self, reference: type, **config: Any):
    super().__init__()
    self.reference = reference
    settings = {key: config.get(key, getattr(reference, key, None)) for key in FRAME_KEYS}
    self.frames = PilBackend(**{k: v for k, v in settings.items() if v is not None})
    self.output_key = reference.model_input_names[0]

  @classmethod
  def from_checkpoint(cls, checkpoint: str | os.PathLike, reference: type) -> PilVideoProcessor:
    """Read the video processor settings saved with a checkpoint (local directory or hub id)."""
    config, _ = cls.get_video_processor_dict(checkpoint)
    return cls(reference, **config)

  def preprocess(self, videos, return_tensors=None, **call_kwargs) -> BatchFeature:
    """videos: sequence of (frames, H, W, 3) uint8 arrays -> {output_key: (videos, frames, 3, h, w)}.

    Processor-level call options (`call_kwargs`) are ignored: the checkpoint's settings always apply.
    """
    stacked = [
        np.stack(self.frames(list(video), return_tensors=None)["pixel_values"]) for video in videos
    ]
    return BatchFeature({self.output_key: stacked}, tensor_type=return_tensors)

  def to_dict(self) -> dict[str, Any]:
    """Serialise as the reference class's config, so a saved processor loads with transformers' own class."""
    config = self.frames.to_dict()
    config.pop("image_processor_type", None)
    config["video_processor_type"] = self.reference.__name__
    return config


class _AcceptsPilVideoProcessor:
  """Mixin for a transformers processor class: lets a PilVideoProcessor pass its sub-processor type check."""

  def check_argument_for_proper_class(self, argument_name, argument):
    if isinstance(argument, PilVideoProcessor):
      return PilVideoProcessor
    return super().check_argument_for_proper_class(argument_name, argument)


def accepting_pil_video_processor(processor_class: type) -> type:
  """`processor_class` extended to take a PilVideoProcessor; same name, so it saves as the original class."""
  return type(processor_class.__name__, (_AcceptsPilVideoProcessor, processor_class), {})
