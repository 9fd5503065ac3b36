"""Frozen multimodal LLMs that describe a clip given an instruction (LMR's Video Context Enhancement).

The paper uses VideoChat, which has no transformers class; here the captioner is any transformers-native
checkpoint whose `model_type` is registered in BACKENDS:

* a video LLM (LLaVA-NeXT-Video) sees all sampled frames of the clip;
* an image LLM (LLaVA-1.5, the paper's LLaVA ablation) sees the clip's middle frame.

Both render the instruction with the checkpoint's chat template, generate greedily (deterministic) in
batches of clips, and return only the newly generated text. Image preprocessing always uses transformers'
PIL backend (see pil_video.py), so CPU and GPU runs preprocess identically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

from preprocess.pil_video import PilVideoProcessor, accepting_pil_video_processor


@dataclass(frozen=True)
class Backend:
  """How to load and prompt one family of checkpoints."""

  model_class: type[PreTrainedModel]
  processor_class: type[ProcessorMixin]
  visual: str  # "video": the clip's frames; "image": its middle frame
  video_processor: type | None = None  # transformers video processor class whose settings to mirror


BACKENDS: dict[str, Backend] = {
    "llava_next_video": Backend(
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
        "video",
        LlavaNextVideoVideoProcessor,
    ),
    "llava": Backend(LlavaForConditionalGeneration, LlavaProcessor, "image"),
}


def load_processor(checkpoint: str | os.PathLike, backend: Backend) -> ProcessorMixin:
  """The checkpoint's processor, with PIL-backed image and video sub-processors."""
  processor_class = backend.processor_class
  parts: dict[str, object] = {
      "image_processor": AutoImageProcessor.from_pretrained(checkpoint, backend="pil"),
      "tokenizer": AutoTokenizer.from_pretrained(checkpoint),
  }
  if backend.video_processor is not None:
    parts["video_processor"] = PilVideoProcessor.from_checkpoint(
        checkpoint, backend.video_processor
    )
    processor_class = accepting_pil_video_processor(processor_class)
  processor_dict, init_kwargs = processor_class.get_processor_dict(checkpoint)
  args = [parts[name] for name in processor_class.get_attributes()]
  return processor_class.from_args_and_dict(args, processor_dict, **init_kwargs)


class Captioner:
  """Caption batches of clips with one checkpoint.

  `frames_per_clip` is how many frames per clip the model looks at: an image LLM sees one frame, so
  asking the decoder for more would only cost time.
  """

  def __init__(
      self,
      checkpoint: str | os.PathLike,
      device: torch.device,
      dtype: torch.dtype,
      max_new_tokens: int,
      *,
      frames_per_clip: int,
  ):
    model_type = AutoConfig.from_pretrained(checkpoint).model_type
    if model_type not in BACKENDS:
      raise ValueError(f"no captioner for model_type {model_type!r}; supported: {sorted(BACKENDS)}")
    self.backend = BACKENDS[model_type]
    self.frames_per_clip = frames_per_clip if self.backend.visual == "video" else 1
    self.processor = load_processor(checkpoint, self.backend)
    self.processor.tokenizer.padding_side = (
        "left"  # batched decoder-only generation continues on the right
    )
    self.model = self.backend.model_class.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    self.device, self.dtype, self.max_new_tokens = device, dtype, max_new_tokens

  def _prompt(self, instruction: str) -> str:
    content = [{"type": self.backend.visual}, {"type": "text", "text": instruction}]
    return self.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )

  @torch.inference_mode()
  def caption(self, clips: Sequence[np.ndarray], instructions: Sequence[str]) -> list[str]:
    """clips: (frames_per_clip, H, W, 3) uint8 arrays; returns one stripped caption per clip."""
    if self.backend.visual == "video":
      visual = {"videos": list(clips)}
    else:
      visual = {"images": [clip[len(clip) // 2] for clip in clips]}
    inputs = self.processor(
        text=[self._prompt(i) for i in instructions], padding=True, return_tensors="pt", **visual
    ).to(device=self.device, dtype=self.dtype)
    output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [
        text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)
    ]
