"""The demo on the synthetic benchmark's own videos, with no downloaded model.

A workdir trained on data the generator wrote (``lmr_jax.data.synthetic``; its settings file lies
beside the feature root) needs no CLIP, Llama or video LLM: a typed query is encoded with the
generator's own token tables, exactly as the generator encodes its queries, and the videos are the
benchmark's val and test videos, whose feature files and clip captions are already on disk. Synthetic
videos have no frames, so a video is drawn as its events: runs of clips whose captions name one actor
and action, labelled with what the captions say. A query's true moments are its annotation's windows
when it is one of the video's annotated queries, else the events whose captions name the query's
actor, action and scene.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from pathlib import Path

import numpy as np

from lmr_jax.data import queries as queries_lib
from lmr_jax.data import synthetic as synthetic_data
from lmr_jax.demo.session import Answer, DemoError, caption_rows, parse_queries
from lmr_jax.inference import predictor as predictor_lib

SPLITS = ("val", "test_with_gt")  # the splits whose videos the page serves (labelled ones only)


def _words(text: str) -> list[str]:
  return synthetic_data.tokenize(text.lower())


def _vocabulary() -> frozenset[str]:
  """Every word of the benchmark's queries: the query templates' words and the phrase lists."""
  words = set()
  for template in synthetic_data.QUERY_TEMPLATES:
    words.update(w for w in _words(re.sub(r"\{\w+\}", " ", template)))
  for phrases in (synthetic_data.ACTORS, synthetic_data.ACTIONS, synthetic_data.SCENES):
    for phrase in phrases:
      words.update(_words(phrase))
  return frozenset(words)


VOCABULARY = _vocabulary()


def check_vocabulary(text: str) -> None:
  """A query with a word the benchmark's queries never use is one message listing the vocabulary."""
  unknown = list(dict.fromkeys(w for w in _words(text) if w not in VOCABULARY))
  if unknown:
    raise DemoError(
        f"{', '.join(repr(w) for w in unknown)}: not in the synthetic benchmark's vocabulary; "
        f"use these words: {' '.join(sorted(VOCABULARY))}"
    )


def _phrase(text: str, phrases: tuple[str, ...]) -> str | None:
  """The one phrase of ``phrases`` that ``text`` names (longest first, so "old man" is not "man");
  None when it names none or more than one."""
  rest, found = f" {' '.join(_words(text))} ", set()
  for phrase in sorted(phrases, key=len, reverse=True):
    padded = f" {' '.join(_words(phrase))} "
    if padded in rest:
      found.add(phrase)
      rest = rest.replace(padded, " | ")
  return found.pop() if len(found) == 1 else None


@dataclasses.dataclass(frozen=True)
class Subject:
  """Who does what where, as a caption or a query names it (None: not named, or not one)."""

  actor: str | None
  action: str | None
  scene: str | None

  @classmethod
  def of(cls, text: str) -> Subject:
    return cls(
        _phrase(text, synthetic_data.ACTORS),
        _phrase(text, synthetic_data.ACTIONS),
        _phrase(text, synthetic_data.SCENES),
    )


@dataclasses.dataclass(frozen=True)
class Event:
  """Clips ``start`` to ``end`` (one past) whose captions name one actor and action."""

  start: int
  end: int
  actor: str
  action: str
  scene: str | None  # the scene most of its captions name; None if none does

  @property
  def label(self) -> str:
    return f"{self.actor} {self.action}" + (f", {self.scene}" if self.scene else "")


def caption_events(captions: list[str]) -> list[Event]:
  """The events the captions describe: maximal runs of clips naming the same actor and action."""
  subjects = [Subject.of(c) for c in captions]
  events, i = [], 0
  while i < len(subjects):
    actor, action = subjects[i].actor, subjects[i].action
    if actor is None or action is None:
      i += 1
      continue
    j = i
    while j < len(subjects) and (subjects[j].actor, subjects[j].action) == (actor, action):
      j += 1
    scenes = collections.Counter(s.scene for s in subjects[i:j] if s.scene)
    scene = scenes.most_common(1)[0][0] if scenes else None
    events.append(Event(i, j, actor, action, scene))
    i = j
  return events


@dataclasses.dataclass(frozen=True)
class Truth:
  """A query's true moments in seconds, and where they come from (shown beside them)."""

  windows: tuple[tuple[float, float], ...]
  source: str


def true_moments(
    query: str, events: list[Event], *, clip_len: float, duration: float, annotated: dict
) -> Truth:
  """The annotation's windows for an annotated query of the video (``annotated``: text -> windows),
  else those of the events that match the actor, action and scene the query names."""
  key = " ".join(_words(query))
  if key in annotated:
    return Truth(annotated[key], "annotation")
  subject = Subject.of(query)
  if None in (subject.actor, subject.action, subject.scene):
    return Truth((), "the query names no single actor, action and scene")
  windows = tuple(
      (e.start * clip_len, min(e.end * clip_len, duration))
      for e in events
      if (e.actor, e.action, e.scene) == (subject.actor, subject.action, subject.scene)
  )
  return Truth(windows, "the captions' events")


@dataclasses.dataclass(frozen=True)
class SyntheticAnswer(Answer):
  """An ``Answer`` with what the synthetic page adds: each query's true moments, the video's events,
  and the records of the model it is compared with (None without one)."""

  truths: list[Truth] = dataclasses.field(default_factory=list)
  events: list[Event] = dataclasses.field(default_factory=list)
  num_clips: int = 0
  clip_len: float = 2.0
  duration: float = 0.0
  compare_records: list[dict] | None = None


def data_root(config) -> Path | None:
  """The generator's output folder of a workdir's data (None if the generator did not write it)."""
  root = Path(config.data.feat_root).parent
  return root if (root / synthetic_data.SETTINGS_FILE).is_file() else None


class SyntheticDemoSession:
  """A restored synthetic workdir (and, optionally, a second one to compare with), serving the val
  and test videos of its data with their annotated queries."""

  def __init__(
      self,
      predictor: predictor_lib.Predictor,
      cache_dir: str | os.PathLike,
      *,
      compare: predictor_lib.Predictor | None = None,
      top_k: int = 10,
  ):
    config = predictor.config
    predictor_lib.check_options(config, top_k, None, 0.5)
    root = data_root(config)
    if root is None:
      raise DemoError(
          f"{config.data.feat_root}: not the synthetic generator's data (no "
          f"{synthetic_data.SETTINGS_FILE} beside it); a model of real videos needs --clip and "
          "--llama"
      )
    if compare is not None and (
        Path(compare.config.data.feat_root).resolve() != Path(config.data.feat_root).resolve()
    ):
      raise DemoError(
          f"--compare_workdir was trained on {compare.config.data.feat_root}, --workdir on "
          f"{config.data.feat_root}: compare models of the same data"
      )
    self.predictor, self.compare = predictor, compare
    self.cache_dir, self.top_k = Path(cache_dir), top_k
    self.features = config.data.feat_root
    self.videos = None  # no raw files: the page draws the videos
    # {vid: {normalised query text: windows}} and the picker's (label, text) rows per video
    self.annotated: dict[str, dict[str, tuple]] = collections.defaultdict(dict)
    self.picks: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for split in SPLITS:
      path = config.data.annotation_files.get(split)
      if not path or not os.path.isfile(path):
        continue
      for ann in queries_lib.load_annotations(path):
        self.annotated[ann.vid][" ".join(_words(ann.query))] = ann.windows
        self.picks[ann.vid].append((f"{split} qid {ann.qid}: {ann.query}", ann.query))
    if not self.picks:
      raise DemoError(
          f"no {' or '.join(SPLITS)} annotations of {config.data.feat_root} "
          f"(config.data.annotation_files): train.py writes them on its first run"
      )
    self.annotated, self.picks = dict(self.annotated), dict(self.picks)
    self.feature_vids = sorted(self.picks)

  @property
  def config(self):
    return self.predictor.config

  def _check_vid(self, vid: str | None) -> None:
    """Only a served video's files are read: a request names one of the listed vids."""
    if not vid or vid not in self.picks:
      raise DemoError(f"pick one of the benchmark's {len(self.feature_vids)} val and test videos")

  def encode(self, text: str, config=None) -> predictor_lib.QueryInputs:
    """``text`` through the generator's token tables, as its query token files are written, for
    ``config``'s model (default: the workdir's)."""
    check_vocabulary(text)
    normal = " ".join(_words(text))
    config = config or self.config
    return predictor_lib.query_inputs(
        config,
        text,
        synthetic_data.embed_tokens(normal, config.data.query_dim, "clip"),
        synthetic_data.embed_tokens(normal, config.data.caption_dim, "llm"),
    )

  def captions(self, vid: str) -> list[str]:
    """The clip captions the generator wrote for ``vid`` (its caption feature file)."""
    return self._caption_file(vid)[0]

  def _caption_file(self, vid: str) -> tuple[list[str], list[str]]:
    """(captions, the instruction each answered) of ``vid``'s caption feature file."""
    path = Path(self.features) / self.config.data.caption_feat_dir / f"{vid}.npz"
    try:
      with np.load(path) as npz:
        captions = [str(c) for c in npz["captions"]]
        instructions = [str(i) for i in npz["instructions"]]
    except (OSError, ValueError, KeyError) as e:
      raise DemoError(f"{path}: no readable captions ({type(e).__name__}: {e})") from None
    return captions, instructions

  def events(self, vid: str) -> tuple[list[Event], int, float, float]:
    """(events, clips, clip length, duration) of a served video, for its strip before a query."""
    self._check_vid(vid)
    captions, clip_len = self.captions(vid), self.config.data.clip_len
    return caption_events(captions), len(captions), clip_len, len(captions) * clip_len

  def answer(self, vid: str | None, text: str | None) -> SyntheticAnswer:
    """Moments, true moments and events for each query (one per line) in a served video."""
    queries = parse_queries(text)
    self._check_vid(vid)
    encoded = [self.encode(q) for q in queries]  # an unknown word fails before any model runs
    inputs = predictor_lib.load_video_inputs(self.config, self.features, vid)
    captions, instructions = self._caption_file(vid)
    clip_len = self.config.data.clip_len
    events = caption_events(captions)
    records = self.predictor.predict(inputs, encoded, self.top_k)
    compare_records = None
    if self.compare is not None:
      compare_inputs = predictor_lib.load_video_inputs(self.compare.config, self.features, vid)
      compare_queries = [self.encode(q, self.compare.config) for q in queries]
      compare_records = self.compare.predict(compare_inputs, compare_queries, self.top_k)
    rows = caption_rows(
        captions[: inputs.num_clips], instructions, clip_len=clip_len, duration=inputs.duration
    )
    return SyntheticAnswer(
        records,
        rows,
        vid,
        truths=[
            true_moments(
                q,
                events,
                clip_len=clip_len,
                duration=inputs.duration,
                annotated=self.annotated[vid],
            )
            for q in queries
        ],
        events=events,
        num_clips=inputs.num_clips,
        clip_len=clip_len,
        duration=inputs.duration,
        compare_records=compare_records,
    )
