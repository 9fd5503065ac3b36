"""The demo page's pictures of an ``Answer``, as plain data: the moments timeline (HTML whose
buttons seek the player), the saliency curve's rows, the caption table's rows. No web framework here,
so each is tested on its own.
"""

from __future__ import annotations

import html

# A moment button carries its start in data-seek; this page script (installed once, on load) seeks
# the player there. Delegated from the document, it serves timelines rendered after the page loaded.
SEEK_JS = """
() => {
  document.addEventListener("click", (event) => {
    const target = event.target.closest ? event.target.closest("[data-seek]") : null;
    const video = document.querySelector("#lmr-player video");
    if (!target || !video) return;
    video.currentTime = parseFloat(target.dataset.seek);
    video.play().catch(() => {});
  });
}
"""

CSS = """
.lmr-query { margin: 0 0 16px 0; }
.lmr-query-text { font-weight: 600; margin-bottom: 4px; }
.lmr-row { display: flex; align-items: center; gap: 8px; margin: 2px 0; }
.lmr-rank { width: 2.2em; font-size: 12px; color: #6b7280; text-align: right; }
.lmr-lane { position: relative; flex: 1; height: 14px; border-radius: 3px; background: #e5e7eb; }
.lmr-span { position: absolute; top: 0; height: 14px; border: 0; border-radius: 3px; padding: 0;
            cursor: pointer; background: #2563eb; }
.lmr-moment, .lmr-moment-space { width: 12em; font-size: 12px; }
.lmr-moment { border: 1px solid #2563eb; border-radius: 4px; background: white; color: #1e3a8a;
              padding: 1px 6px; cursor: pointer; text-align: left; }
.lmr-axis { flex: 1; display: flex; justify-content: space-between; font-size: 11px; color: #6b7280; }
.lmr-error { border: 1px solid #dc2626; background: #fef2f2; color: #991b1b; border-radius: 4px;
             padding: 8px 12px; }
"""


def _seconds(x: float) -> str:
  return f"{x:.1f}"


def _moment_row(rank: int, start: float, end: float, score: float, *, duration: float) -> str:
  """One moment: its rank, a lane with its span on the video's time axis, its times and score."""
  left = 100 * min(max(start / duration, 0.0), 1.0)
  width = max(100 * min(end, duration) / duration - left, 0.5)
  return (
      f'<div class="lmr-row"><span class="lmr-rank">#{rank}</span>'
      f'<div class="lmr-lane"><button class="lmr-span" data-seek="{start}" '
      f'title="play from {_seconds(start)} s" style="left:{left:.3f}%;width:{width:.3f}%">'
      f'</button></div><button class="lmr-moment" data-seek="{start}">{_seconds(start)}-'
      f"{_seconds(end)} s &middot; {score:.3f}</button></div>"
  )


def _query_block(index: int, record: dict) -> str:
  """One query's moments, best first, one lane each over the same time axis."""
  duration = max(float(record["duration"]), 1e-6)
  rows = "".join(
      _moment_row(rank, start, end, score, duration=duration)
      for rank, (start, end, score) in enumerate(record["pred_relevant_windows"], 1)
  )
  return (
      f'<div class="lmr-query" data-query="{index}">'
      f'<div class="lmr-query-text">{html.escape(record["query"] or "")}</div>{rows}'
      f'<div class="lmr-row"><span class="lmr-rank"></span><div class="lmr-axis"><span>0 s</span>'
      f'<span>{_seconds(duration)} s</span></div><span class="lmr-moment-space"></span></div></div>'
  )


def timeline_html(records: list[dict]) -> str:
  """Every query's top moments on the video's time axis, best first; a click seeks the player."""
  return "".join(_query_block(i, record) for i, record in enumerate(records))


def error_html(message: str) -> str:
  return f'<div class="lmr-error" role="alert">{html.escape(message)}</div>'


def saliency_rows(records: list[dict]) -> dict[str, list]:
  """Columns of the saliency curve: each clip's centre in seconds, its score, its query."""
  columns = {"time (s)": [], "saliency": [], "query": []}
  for record in records:
    clip_len = float(record["clip_len"])
    for i, score in enumerate(record["pred_saliency_scores"]):
      columns["time (s)"].append(round((i + 0.5) * clip_len, 3))
      columns["saliency"].append(score)
      columns["query"].append(record["query"])
  return columns


def caption_rows(captions: list[dict]) -> list[list[str]]:
  """The caption table: clip time span, the caption, the Table I instruction that asked for it."""
  return [
      [f"{_seconds(c['start'])}-{_seconds(c['end'])} s", c["caption"], c["instruction"]]
      for c in captions
  ]
