"""demo.py: its session and pictures in this process, then the page itself, served by demo.py on a
local port with the tiny CLIP-only workdir and the tiny preprocessing models (conftest), driven in
headless Chromium (Debian's chromium and chromium-driver; .ci/run installs them)."""

import json
import os
import urllib.request
from pathlib import Path

import pytest

import browser as browser_lib  # noqa: E402
from conftest import REPO, child_environment, entry_point  # noqa: E402
from lmr_jax import cli  # noqa: E402
from lmr_jax.errors import LmrError  # noqa: E402
from lmr_jax.demo import session as session_lib  # noqa: E402
from lmr_jax.demo import views  # noqa: E402
from lmr_jax.inference import encoders as encoders_lib  # noqa: E402
from lmr_jax.inference import predictor as predictor_lib  # noqa: E402
from tiny_models import write_video  # noqa: E402

pytestmark = pytest.mark.slow  # serves the demo and drives a browser

QUERIES = "a man walking dog in the park\nwoman cooks food"
MODEL_OPTIONS = {"max_new_tokens": 3, "caption_batch_size": 4}
RECORD = {
    "query": "a <b>dog</b> & a man",
    "vid": "v",
    "duration": 9.0,
    "clip_len": 2.0,
    "pred_relevant_windows": [[2.0, 6.0, 0.9], [0.0, 12.0, 0.5]],
    "pred_saliency_scores": [0.1, 0.5, 0.2, 0.0, -0.3],
}


# --- the pictures --------------------------------------------------------------------------------


def test_timeline_has_one_seek_button_pair_per_moment_best_first():
  page = views.timeline_html([RECORD])
  assert "a &lt;b&gt;dog&lt;/b&gt; &amp; a man" in page and "<b>" not in page
  assert page.count('data-seek="2.0"') == 2 and page.count('data-seek="0.0"') == 2
  assert page.index("2.0-6.0 s &middot; 0.900") < page.index("0.0-12.0 s &middot; 0.500")
  # spans stay on the axis: 2-6 s of 9 s, and 0-12 s cut at the end of the video
  assert "left:22.222%;width:44.444%" in page and "left:0.000%;width:100.000%" in page
  assert views.timeline_html([]) == ""


def test_saliency_rows_and_caption_rows():
  rows = views.saliency_rows([RECORD, {**RECORD, "query": "q2"}])
  assert rows["time (s)"][:3] == [1.0, 3.0, 5.0] and len(rows["saliency"]) == 10
  assert rows["query"] == [RECORD["query"]] * 5 + ["q2"] * 5
  captions = [{"start": 8.0, "end": 9.0, "caption": "a dog", "instruction": "Describe."}]
  assert views.caption_rows(captions) == [["8.0-9.0 s", "a dog", "Describe."]]
  assert 'role="alert"' in views.error_html("x <y>") and "x &lt;y&gt;" in views.error_html("x <y>")


# --- the session -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """9 s of VP9 in WebM: 5 clips of 2 s (the last one 1 s), a format every browser plays."""
  path = tmp_path_factory.mktemp("videos") / "walk.webm"
  write_video(path, 9.0, codec="libvpx-vp9")
  return path


@pytest.fixture(scope="module")
def session(clip_only_trained, tiny_hf_models, tmp_path_factory):
  config, workdir = clip_only_trained
  encoders = encoders_lib.Encoders(
      config,
      clip=str(tiny_hf_models["clip"]),
      llama=str(tiny_hf_models["llama"]),
      captioner=str(tiny_hf_models["llava"]),
      **MODEL_OPTIONS,
  )
  encoders.load(video=True, text=True)
  predictor = predictor_lib.Predictor.from_workdir(workdir)
  return session_lib.DemoSession(
      predictor,
      encoders,
      tmp_path_factory.mktemp("demo_cache"),
      features=config.data.feat_root,
      top_k=5,
  )


def test_an_upload_is_answered_as_predict_answers_it_and_cached(session, video, monkeypatch):
  progress = []
  answer = session.answer_upload(str(video), QUERIES, lambda f, what: progress.append((f, what)))
  assert [r["query"] for r in answer.records] == QUERIES.splitlines()
  assert answer.video_name == "walk.webm"
  assert [c["end"] for c in answer.captions] == [2.0, 4.0, 6.0, 8.0, 9.0]
  assert all(c["caption"] and c["instruction"] for c in answer.captions)
  fractions = [f for f, _ in progress]
  assert fractions == sorted(fractions) and fractions[-1] == 0.9
  assert {what.split(":")[0] for _, what in progress} >= {"clip features", "captions", "predicting"}
  # predict.py's record of the same video and queries, through the same encoders and loaders
  inputs = predictor_lib.load_video_inputs(
      session.config,
      str(session.cache_dir / "features"),
      session_lib._content_id(str(video)),
      answer.records[0]["duration"],
  )
  queries = [session.encoders.query(q) for q in QUERIES.splitlines()]
  expected = session.predictor.predict(inputs, queries, top_k=5)
  assert answer.records == [{**r, "video": "walk.webm"} for r in expected]
  # a second question about the same video reads its cached features: no model sees the video
  monkeypatch.setattr(
      encoders_lib.Encoders, "captioner", property(lambda self: pytest.fail("captioned again"))
  )
  monkeypatch.setattr(
      encoders_lib.Encoders, "clip_image", property(lambda self: pytest.fail("encoded again"))
  )
  again = session.answer_upload(str(video), "a person is walking")
  assert again.captions == answer.captions and len(again.records) == 1


def test_a_feature_video_is_answered_from_its_files(session):
  vid = session.feature_vids[0]
  answer = session.answer_features(vid, "woman talks to camera")
  assert answer.records[0]["vid"] == vid and answer.captions == []  # synthetic data: no captions
  assert len(answer.records[0]["pred_relevant_windows"]) == 5


@pytest.mark.parametrize(
    "case, message",
    [
        ("no query", "enter a query"),
        ("too many queries", "at most 20 queries at a time, got 21"),
        ("no video", "upload a video, or pick one with precomputed features"),
        ("broken video", "broken.mp4: unreadable video"),
        ("unknown feature video", "no video 'nope' with precomputed features under"),
        ("features of another model", "caption_features"),
        (
            "upload over the size limit",
            "MB; this server takes uploads up to 0.001 MB",
        ),
        (
            "video over the duration limit",
            "walk.webm: 0.15 minutes long; this server takes videos up to 0.1 minutes",
        ),
        ("text under a video's name", "notes.mp4: unreadable video"),
    ],
)
def test_bad_requests_are_one_line_messages(
    session, video, tiny_data_root, tmp_path, case, message
):
  broken = tmp_path / "broken.mp4"
  broken.write_bytes(os.urandom(3000))
  # conftest's other tiny data: 20-wide caption vectors, where this model was trained on 16
  other = session_lib.DemoSession(
      session.predictor, session.encoders, tmp_path, os.path.join(tiny_data_root, "features")
  )
  limited = dict(features=session.features, top_k=5, max_upload_mb=0.001, max_video_minutes=0.1)
  small = session_lib.DemoSession(session.predictor, session.encoders, tmp_path, **limited)
  short = session_lib.DemoSession(
      session.predictor, session.encoders, tmp_path, **{**limited, "max_upload_mb": 100}
  )
  notes = tmp_path / "notes.mp4"  # a mislabelled upload: judged by its content
  notes.write_text("meeting notes, not a video\n" * 50)
  request = {
      "features of another model": lambda: other.answer_features(other.feature_vids[0], "a man"),
      "upload over the size limit": lambda: small.answer_upload(str(video), "a man"),
      "video over the duration limit": lambda: short.answer_upload(str(video), "a man"),
      "text under a video's name": lambda: session.answer_upload(str(notes), "a man"),
      "no query": lambda: session.answer_upload(str(broken), " \n "),
      "too many queries": lambda: session.answer_upload(str(broken), "q\n" * 21),
      "no video": lambda: session.answer_upload(None, "a man"),
      "broken video": lambda: session.answer_upload(str(broken), "a man"),
      "unknown feature video": lambda: session.answer_features("nope", "a man"),
  }[case]
  with pytest.raises(LmrError) as error:
    request()
  assert message in str(error.value) and "\n" not in str(error.value)
  assert str(tmp_path) not in str(error.value)  # the user's file name, not the server's path


def test_a_request_names_only_videos_the_page_lists(session):
  """The player's file is looked up for listed feature videos only: a made-up name, a pattern or a
  path never reaches the filesystem."""
  listed = session_lib.DemoSession(
      session.predictor,
      session.encoders,
      session.cache_dir,
      features=session.features,
      videos=session.features,  # any folder: the names are what is checked
      top_k=5,
  )
  for vid in ("../../etc/passwd", "*", "/etc/hostname", "nope"):
    assert listed.video_file(vid) is None


@pytest.fixture(scope="module")
def demo_cli():
  with entry_point("demo.py") as module:
    yield module


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workdir={tmp}/nope"], "no such workdir"),
        (["--workdir={workdir}", "--videos={tmp}"], "--videos goes with --features"),
        (["--workdir={workdir}", "--port=0"], "--port must be in [1, 65535]"),
        (["--workdir={workdir}", "--max_upload_mb=0"], "--max_upload_mb must be positive"),
        (["--workdir={workdir}", "--max_queue=0"], "--max_queue must be at least 1"),
        (["--workdir={workdir}", "--auth_file={tmp}/logins"], "{tmp}/logins: no such login file"),
        (["--workdir={workdir}", "--clip={clip}"], "needs --llama"),
        (
            ["--workdir={workdir}", "--clip={clip}", "--compare_workdir={workdir}"],
            "--compare_workdir: comparing models is for synthetic workdirs",
        ),
        (
            ["--workdir={workdir}", "--clip={clip}", "--llama={clip}", "--captioner={llava}"],
            "--llama {clip}: cannot load",
        ),
    ],
)
def test_start_up_errors_are_one_line_before_serving(
    demo_cli, clip_only_trained, tiny_hf_models, tmp_path, capsys, flags, message
):
  paths = dict(
      tmp=tmp_path,
      workdir=clip_only_trained[1],
      clip=tiny_hf_models["clip"],
      llava=tiny_hf_models["llava"],
  )
  capsys.readouterr()
  argv = ["demo.py"] + [f.format(**paths) for f in flags]
  status = cli.run_absl(demo_cli.main, demo_cli.__doc__, argv)
  err = capsys.readouterr().err.strip()
  assert status == 1 and err.startswith("error: ") and "\n" not in err
  assert message.format(**paths) in err


# --- the page, in a real browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(clip_only_trained, tiny_hf_models, tmp_path_factory):
  """The URL of demo.py serving the tiny workdir (its own process, as a user starts it)."""
  browser_lib.skip_without_browser()
  root = tmp_path_factory.mktemp("served")
  flags = [
      f"--workdir={clip_only_trained[1]}",
      f"--clip={tiny_hf_models['clip']}",
      f"--llama={tiny_hf_models['llama']}",
      f"--captioner={tiny_hf_models['llava']}",
      f"--cache_dir={root / 'cache'}",
      "--top_k=5",
  ] + [f"--{key}={value}" for key, value in MODEL_OPTIONS.items()]
  with browser_lib.serve_demo(flags, root / "demo.log", cwd=REPO, env=child_environment(1)) as url:
    yield url


@pytest.fixture
def browser(tmp_path):
  with browser_lib.open_browser(tmp_path) as driver:
    yield driver


def _ask(driver, url: str, video: Path, queries: str) -> None:
  """Opens the page, uploads ``video``, types ``queries`` and presses Find moments."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  driver.get(url)
  wait = WebDriverWait(driver, 60)
  upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#lmr-player input[type=file]"))
  upload.send_keys(str(video))
  wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lmr-player video"))
  driver.find_element(By.CSS_SELECTOR, "#lmr-queries textarea").send_keys(queries)
  driver.find_element(By.CSS_SELECTOR, "#lmr-run").click()
  WebDriverWait(driver, 300).until(
      lambda d: d.find_elements(
          By.CSS_SELECTOR, "#lmr-timeline [data-seek], #lmr-status .lmr-error"
      )
  )


def test_page_shows_moments_saliency_and_captions_and_seeks(served, browser, video, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  _ask(browser, served, video, QUERIES)
  assert browser.find_element(By.ID, "lmr-status").text == ""
  timeline = browser.find_element(By.ID, "lmr-timeline")
  assert [e.text for e in timeline.find_elements(By.CLASS_NAME, "lmr-query-text")] == (
      QUERIES.splitlines()
  )
  moments = timeline.find_elements(By.CLASS_NAME, "lmr-moment")
  assert len(moments) == 2 * 5  # top 5 of each query
  # one line per query in the saliency plot (Vega draws it as SVG paths)
  wait = WebDriverWait(browser, 30)
  wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#lmr-saliency .mark-line path")) == 2)
  captions = browser.find_element(By.ID, "lmr-captions").text
  for span in ("0.0-2.0 s", "6.0-8.0 s", "8.0-9.0 s"):
    assert span in captions
  # the download is predict.py's JSON Lines, and the timeline shows its moments
  link = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#lmr-download a[href]"))
  with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
    records = [json.loads(line) for line in response.read().decode().splitlines()]
  assert [r["query"] for r in records] == QUERIES.splitlines()
  start, end, score = records[0]["pred_relevant_windows"][1]
  assert moments[1].text == f"{start:.1f}-{end:.1f} s · {score:.3f}"
  # a click on a moment plays the video from its start
  moments[1].click()
  position = "return document.querySelector('#lmr-player video').currentTime"
  wait.until(lambda d: abs(d.execute_script(position) - start) < 1.0)
  browser.save_screenshot(str(tmp_path / "demo.png"))
  assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_page_shows_one_message_for_a_broken_video(served, browser, tmp_path):
  from selenium.webdriver.common.by import By

  broken = tmp_path / "broken.mp4"
  broken.write_bytes(os.urandom(3000))
  _ask(browser, served, broken, "a man walking dog")
  message = browser.find_element(By.CSS_SELECTOR, "#lmr-status .lmr-error").text
  assert message.startswith("broken.mp4: unreadable video") and "\n" not in message
  assert "Traceback" not in browser.page_source
  assert browser.find_elements(By.CSS_SELECTOR, "#lmr-timeline [data-seek]") == []
  browser.save_screenshot(str(tmp_path / "demo_error.png"))
