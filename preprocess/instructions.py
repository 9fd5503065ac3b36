"""The caption instructions of LMR's Video Context Enhancement (paper Sec. III-B, Table I) and their sampler.

Each clip is captioned with one instruction drawn uniformly at random from the list. The draw for a video
depends only on (seed, vid), never on sharding, batching or which videos were already done, so a resumed or
re-sharded run asks the same question about the same clip.
"""

from __future__ import annotations

import hashlib

import numpy as np

TABLE_I = (
    "Describe the following video concisely.",
    "Provide a brief description of the given video clip.",
    "Offer a succinct explanation of the footage presented.",
    "Summarize the visual content of the following video.",
    "Give a short and clear explanation of the subsequent video clip.",
    "Share a concise interpretation of the video provided.",
    "Present a compact description of the clip's key features.",
    "Relay a brief, clear account of the video shown.",
    "Render a clear and concise summary of the video below.",
    "Write a terse but informative summary of the following video clip.",
)


def sample_instructions(seed: int, vid: str, num_clips: int) -> list[str]:
  """One Table I instruction per clip of video `vid`, in clip order.

  The generator is seeded with (seed, sha256(vid)): Python's hash() is salted per process, so it would
  give different instructions on every run.
  """
  vid_key = int.from_bytes(hashlib.sha256(vid.encode("utf-8")).digest()[:8], "little")
  rng = np.random.default_rng([seed, vid_key])
  return [TABLE_I[i] for i in rng.integers(len(TABLE_I), size=num_clips)]
