"""Tiny random Hugging Face checkpoints and tiny videos, shared by the tests of preprocess/ and predict.

The checkpoints are built from transformers configs (hidden size 16, one or two layers, a 30-word
WordLevel tokenizer, 32x32 images) and saved with save_pretrained exactly as hub checkpoints are, so the
code under test takes the loading, prompting, generation and feature paths of a run with real ones.
Needs torch, transformers and av (preprocess/requirements.txt, which CI installs).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import transformers

from preprocess.pil_video import PilVideoProcessor, accepting_pil_video_processor

FPS = 4
WORDS = "a person is walking dog in the park man cooks food kitchen woman talks to camera while of USER ASSISTANT :"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<video> {% elif c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
TINY_VISION = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32
)
SPECIAL_IDS = dict(
    pad_token_id=0, bos_token_id=2, eos_token_id=3
)  # <pad>, <s>, </s> in tiny_tokenizer
IMAGE_32 = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def tiny_tokenizer(template: str, model_max_length: int):
  """A WordLevel tokenizer over WORDS; `template` adds special tokens the way the real tokenizer does."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

  specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<video>"]
  vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS.split())))}
  tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  tk.decoder = decoders.WordPiece()
  tk.post_processor = processors.TemplateProcessing(
      single=template, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
  )
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tk,
      pad_token="<pad>",
      unk_token="<unk>",
      bos_token="<s>",
      eos_token="</s>",
      extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
      model_max_length=model_max_length,
  )


def llama_text_config(tok) -> transformers.LlamaConfig:
  return transformers.LlamaConfig(
      vocab_size=len(tok), num_key_value_heads=2, **SPECIAL_IDS, **TINY_TEXT
  )


def build_checkpoints(root: Path, clip_projection_dim: int = 8) -> dict[str, Path]:
  """Saves llama, llama_sharded, clip, llava_next_video and llava under ``root``; their paths."""
  torch.manual_seed(0)
  paths = {
      name: root / name for name in ("llama", "llama_sharded", "clip", "llava_next_video", "llava")
  }
  llm_tok = tiny_tokenizer("<s> $A", model_max_length=512)  # Llama adds BOS

  llama = transformers.LlamaForCausalLM(llama_text_config(llm_tok))
  llama.save_pretrained(paths["llama"])
  llama.save_pretrained(paths["llama_sharded"], max_shard_size="4KB")
  for name in ("llama", "llama_sharded"):
    llm_tok.save_pretrained(paths[name])

  clip_tok = tiny_tokenizer("<s> $A </s>", model_max_length=16)  # CLIP adds start and end tokens
  clip_text = dict(vocab_size=len(clip_tok), max_position_embeddings=16, **SPECIAL_IDS)
  clip = transformers.CLIPModel(
      transformers.CLIPConfig(
          text_config=dict(**clip_text, **TINY_TEXT),
          vision_config=dict(patch_size=16, **TINY_VISION),
          projection_dim=clip_projection_dim,
      )
  )
  clip.save_pretrained(paths["clip"])
  clip_tok.save_pretrained(paths["clip"])
  transformers.CLIPImageProcessorPil(**IMAGE_32).save_pretrained(paths["clip"])

  vision = transformers.CLIPVisionConfig(patch_size=8, **TINY_VISION)
  token_ids = dict(
      image_token_index=llm_tok.convert_tokens_to_ids("<image>"),
      video_token_index=llm_tok.convert_tokens_to_ids("<video>"),
  )
  transformers.LlavaNextVideoForConditionalGeneration(
      transformers.LlavaNextVideoConfig(
          text_config=llama_text_config(llm_tok),
          vision_config=vision,
          image_grid_pinpoints=[[32, 32]],
          **token_ids,
      )
  ).save_pretrained(paths["llava_next_video"])
  from transformers.models.llava_next_video.video_processing_llava_next_video import (
      LlavaNextVideoVideoProcessor,
  )

  accepting_pil_video_processor(transformers.LlavaNextVideoProcessor)(
      video_processor=PilVideoProcessor(LlavaNextVideoVideoProcessor, **IMAGE_32),
      image_processor=transformers.LlavaNextImageProcessorPil(
          image_grid_pinpoints=[[32, 32]], **IMAGE_32
      ),
      tokenizer=llm_tok,
      chat_template=CHAT_TEMPLATE,
      patch_size=8,
      vision_feature_select_strategy="default",
  ).save_pretrained(paths["llava_next_video"])

  transformers.LlavaForConditionalGeneration(
      transformers.LlavaConfig(
          text_config=llama_text_config(llm_tok),
          vision_config=vision,
          image_token_index=token_ids["image_token_index"],
      )
  ).save_pretrained(paths["llava"])
  transformers.LlavaProcessor(
      image_processor=transformers.CLIPImageProcessorPil(**IMAGE_32),
      tokenizer=llm_tok,
      chat_template=CHAT_TEMPLATE,
      patch_size=8,
      vision_feature_select_strategy="default",
      num_additional_image_tokens=1,
  ).save_pretrained(paths["llava"])
  return paths


def frame_level(index: int) -> int:
  """Grey level of frame `index` in the generated videos, so tests can tell which frame was sampled."""
  return (index * 9) % 250


def write_video(path: Path, seconds: float, first_pts: int = 0, codec: str = "mpeg4") -> None:
  """A 64x64, 4 fps file; `first_pts` > 0 makes the stream start after 0 s, as cut clips often do.
  `codec` "libvpx-vp9" (in .webm) gives a file every browser plays."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=FPS)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    for i in range(int(seconds * FPS)):
      frame = av.VideoFrame.from_ndarray(
          np.full((64, 64, 3), frame_level(i), np.uint8), format="rgb24"
      )
      frame.pts, frame.time_base = first_pts + i, Fraction(1, FPS)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
