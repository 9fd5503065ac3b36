"""The command-line flags of the frozen preprocessing models, shared by predict.py and demo.py.

``define()`` registers them with absl when an entry point calls it (importing this module registers
nothing), and ``EncoderFlags.encoders(config)`` builds the ``Encoders`` they describe. The torch side
is imported only there, so a run on precomputed features needs neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from lmr_jax.inference.predictor import PredictError


@dataclasses.dataclass(frozen=True)
class EncoderFlags:
  """The flag holders ``define`` returns; ``.value`` is read only after the flags are parsed."""

  clip: flags.FlagHolder
  llama: flags.FlagHolder
  captioner: flags.FlagHolder
  slowfast: flags.FlagHolder
  embedding_key: flags.FlagHolder
  device: flags.FlagHolder
  dtype: flags.FlagHolder
  clip_frames_per_clip: flags.FlagHolder
  caption_frames_per_clip: flags.FlagHolder
  caption_batch_size: flags.FlagHolder
  max_new_tokens: flags.FlagHolder
  seed: flags.FlagHolder

  def encoders(self, config):
    """The ``Encoders`` of these flags for a model trained with ``config`` (nothing loaded yet; the
    entry point's loading is quiet)."""
    try:
      from lmr_jax.inference import encoders
    except ImportError as e:
      raise PredictError(
          f"a raw video or query text needs preprocess/requirements.txt (torch, transformers, av): {e}"
      ) from None
    encoders.quiet_model_loading()
    values = {field.name: getattr(self, field.name).value for field in dataclasses.fields(self)}
    return encoders.Encoders(config, **values)


def define() -> EncoderFlags:
  """Registers the flags on absl's global FLAGS; an entry point calls it once, at its top."""
  return EncoderFlags(
      clip=flags.DEFINE_string("clip", None, "CLIP checkpoint: video frames and query text."),
      llama=flags.DEFINE_string("llama", None, "Llama checkpoint: caption and query embeddings."),
      captioner=flags.DEFINE_string("captioner", None, "The captioning video LLM (raw videos)."),
      slowfast=flags.DEFINE_string(
          "slowfast",
          None,
          "SlowFast R50 8x8 checkpoint, SLOWFAST_8x8_R50.pkl or .pyth (raw videos, SlowFast models).",
      ),
      embedding_key=flags.DEFINE_string(
          "embedding_key", "model.embed_tokens.weight", "Name of Llama's embedding table."
      ),
      device=flags.DEFINE_string(
          "device", "auto", "torch device: auto (cuda if any), cpu, cuda:1, ..."
      ),
      dtype=flags.DEFINE_enum(
          "dtype",
          "auto",
          ["auto", "float16", "bfloat16", "float32"],
          "torch dtype (as preprocess).",
      ),
      clip_frames_per_clip=flags.DEFINE_integer(
          "clip_frames_per_clip", 1, "Frames CLIP averages per clip."
      ),
      caption_frames_per_clip=flags.DEFINE_integer(
          "caption_frames_per_clip", 8, "Frames the video LLM sees per clip."
      ),
      caption_batch_size=flags.DEFINE_integer("caption_batch_size", 8, "Clips per captioner call."),
      max_new_tokens=flags.DEFINE_integer("max_new_tokens", 64, "Caption length limit in tokens."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the per-clip caption instruction draw."),
  )
