"""Video: decoding and even sampling, each video's plan (frames as views, tokens pooled), the data formats, the
moving-shapes generator, training, evaluation and the API with video_url parts."""

from __future__ import annotations

import base64
import json
import random

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from minillava.data.conversation import Conversation, SampleError, Turn, Video
from minillava.data.formats import parse_record
from minillava.data.motion import DIRECTIONS, NOTHING, sample_clip, synthesize_motion
from minillava.data.validate import check_file
from minillava.data.video import (
    FramePooling,
    TooManyFrames,
    VideoError,
    frame_count,
    load_frames,
    sample_indices,
    write_video,
)
from minillava.model import GenerationConfig, MiniLlava, MiniLlavaConfig, VideoConfig, build_prompt
from minillava.serve import BackgroundServer, ServeConfig, create_app
from tests.test_serve import data_url, varied

RED, BLUE = (220, 30, 30), (30, 70, 220)


def marching(frames: int = 12, size: int = 32) -> list[Image.Image]:
    """A red square stepping right by 2 px a frame, a blue one from frame 6 on: frame t's square starts at 2t."""
    pictures = []
    for t in range(frames):
        picture = Image.new("RGB", (size, size), (255, 255, 255))
        picture.paste(RED, (2 * t, 4, 2 * t + 6, 10))
        if t >= 6:
            picture.paste(BLUE, (4, 20, 12, 28))
        pictures.append(picture)
    return pictures


def red_column(frame: Image.Image) -> float:
    pixels = np.asarray(frame).astype(int)
    red = (pixels[..., 0] > 150) & (pixels[..., 2] < 100)
    return float(np.nonzero(red)[1].mean())


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "march.mp4", marching())


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for t, frame in enumerate(marching()):
        frame.save(folder / f"frame{t}.png")  # frame10 after frame9: natural order, not text order
    return folder


@pytest.fixture(scope="module")
def model(tiny_towers, tiny_llms) -> MiniLlava:
    return varied(MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"]))


# -- decoding -------------------------------------------------------------------------------------------------


def test_sampling_is_even_and_keeps_both_ends():
    assert sample_indices(12, 4) == [0, 4, 7, 11]
    assert sample_indices(12, 2) == [0, 11]
    assert sample_indices(3, 8) == [0, 1, 2]  # a short video gives what it has
    assert sample_indices(100, 1) == [0]


@pytest.mark.parametrize("source", ["file", "bytes", "folder"])
def test_frames_decode_in_order_from_a_file_its_bytes_or_a_folder(source, clip_file, frame_folder):
    video = Video({"file": clip_file, "bytes": clip_file.read_bytes(), "folder": frame_folder}[source])
    assert frame_count(video) == 12
    frames = load_frames(video, 4)
    assert [f.size for f in frames] == [(32, 32)] * 4 and all(f.mode == "RGB" for f in frames)
    for index, frame in zip(sample_indices(12, 4), frames, strict=True):
        assert red_column(frame) == pytest.approx(2 * index + 2.5, abs=1.0)  # the square's centre at frame index


def test_unusable_videos_are_named_in_the_error(tmp_path, clip_file):
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    (tmp_path / "cut.mp4").write_bytes(clip_file.read_bytes()[:600])
    for name, reason in [("missing.mp4", "no such file"), ("text.mp4", "not a video"),
                         ("empty", "no frame images")]:
        with pytest.raises(VideoError, match=f"{name}: .*{reason}"):
            load_frames(Video(tmp_path / name), 4)
    with pytest.raises(VideoError, match="cut.mp4"):
        load_frames(Video(tmp_path / "cut.mp4"), 8)


# -- plans ----------------------------------------------------------------------------------------------------


def test_a_video_plans_its_frames_as_views_with_pooled_tokens(model, clip_file):
    tokens = model.tokens_per_image  # the tiny tower's 4 x 4 patch grid
    plan = model.encoder.plan_image(Video(clip_file, frames=5))
    assert (plan.views, plan.tokens) == (5, 5 * 2 * 2)  # pool 2: each frame's 4 x 4 grid -> 2 x 2
    assert model.encoder.plan_image(Video(clip_file, frames=40 - 8)).views == 12  # no more than it holds
    with pytest.raises(TooManyFrames, match="33 frames asked for, more than .* video.max_frames \\(32\\)"):
        model.encoder.plan_image(Video(clip_file, frames=33))
    assert model.encoder.plan_image(Video(clip_file)).views == VideoConfig().frames
    assert tokens == 16


def test_frame_pooling_is_bilinear_per_frame_and_keeps_prefix_tokens():
    features = torch.randn(3, 1 + 5 * 5, 8)  # a kept CLS, then a 5 x 5 grid, per frame
    layout = FramePooling(frames=3, grid=(5, 5), pool=2)
    arranged = layout.arrange(features, None)
    assert arranged.shape == (layout.num_tokens(26), 8) == (3 * (1 + 9), 8)
    grid = features[:, 1:].reshape(3, 5, 5, 8).permute(0, 3, 1, 2)
    pooled = F.interpolate(grid, (3, 3), mode="bilinear").flatten(2).transpose(1, 2)
    expected = torch.cat([features[:, :1], pooled], dim=1).flatten(0, 1)
    torch.testing.assert_close(arranged, expected)


def test_the_forward_fills_a_video_and_an_image_in_marker_order(model, clip_file, images):
    video = Video(clip_file, frames=3)
    conversation = Conversation([Turn("user", "<image> then <image>: what changed?"), Turn("assistant", "x")],
                                images=[images[0], video])
    batch = model.prepare([conversation])
    plans = batch.image_plans
    assert [p.views for p in plans] == [1, 3] and sum(p.tokens for p in plans) == 16 + 3 * 4
    assert batch.pixel_values.shape[0] == 4  # the image's view, then the video's 3 frames
    with torch.no_grad():
        embeddings = model.embed(batch.input_ids, batch.pixel_values, image_plans=plans)
        features = model.encode_images(batch.pixel_values)
    slots = embeddings[0, batch.input_ids[0] == model.image_token_id]
    torch.testing.assert_close(slots[:16], features[0])
    torch.testing.assert_close(slots[16:], plans[1].layout.arrange(features[1:], None))


def test_pool_one_keeps_every_token_and_settings_round_trip(tiny_towers, tiny_llms, clip_file, tmp_path):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"],
                                      video=VideoConfig(frames=4, max_frames=6, pool=1))
    plan = model.encoder.plan_image(Video(clip_file))
    assert (plan.views, plan.tokens, plan.layout) == (4, 4 * 16, None)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["video"] == {"frames": 4, "max_frames": 6, "pool": 1} and saved["version"] == 3
    assert MiniLlavaConfig.load(tmp_path / "m").video == VideoConfig(4, 6, 1)
    assert "video" not in MiniLlavaConfig().to_dict()  # defaults: the format older minillava reads


# -- data ---------------------------------------------------------------------------------------------------


def test_llava_video_records_and_sharegpt_video_markers(tmp_path):
    record = {"id": "v", "video": "a.mp4", "conversations": [{"from": "human", "value": "<image>\nWhere?"},
                                                             {"from": "gpt", "value": "left"}]}
    conversation = parse_record(record, "auto", tmp_path)
    assert conversation.images == [Video(tmp_path / "a.mp4")] and conversation.num_placeholders == 1
    record = {"images": ["x.png"], "videos": ["a.mp4"],
              "messages": [{"role": "user", "content": "<video> and <image>: same colour?"},
                           {"role": "assistant", "content": "yes"}]}
    conversation = parse_record(record, "sharegpt", tmp_path)
    assert conversation.images == [Video(tmp_path / "a.mp4"), tmp_path / "x.png"]
    assert conversation.turns[0].content == "<image> and <image>: same colour?"


@pytest.mark.parametrize(("record", "reason"), [
    ({"video": "a.mp4", "image": "x.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                             {"from": "gpt", "value": "x"}]},
     "marks each video with <video>"),
    ({"videos": ["a.mp4", "b.mp4"], "conversations": [{"from": "human", "value": "<video>"},
                                                      {"from": "gpt", "value": "x"}]},
     "1 video placeholder but 2 videos"),
    ({"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "<video>"}]},
     "<video> in assistant text"),
    ({"video": "../a.mp4", "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "x"}]},
     "outside the image root"),
])
def test_bad_video_records_say_why(tmp_path, record, reason):
    with pytest.raises(SampleError, match=reason):
        parse_record(record, "llava", tmp_path / "root")


def test_data_check_names_an_undecodable_video(tmp_path, clip_file):
    (tmp_path / "good.mp4").write_bytes(clip_file.read_bytes())
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    records = [{"id": name, "video": f"{name}.mp4", "conversations": [{"from": "human", "value": "<video>\nWhere?"},
                                                                       {"from": "gpt", "value": "right"}]}
               for name in ("good", "bad", "gone")]
    (tmp_path / "data.json").write_text(json.dumps(records))
    report = check_file(tmp_path / "data.json")
    assert [(e.sample_id, e.reason.split(":")[0]) for e in report.errors] == [
        ("bad", "video 'bad.mp4'"), ("gone", "video 'gone.mp4' not found")]


def test_moving_shapes_need_more_than_one_frame(tmp_path):
    rng = random.Random(0)
    clips = [sample_clip(rng, 64, 16) for _ in range(40)]
    assert {c.direction for c in clips} == set(DIRECTIONS) and {c.appears == NOTHING for c in clips} == {True, False}
    for clip in clips[:10]:
        first, last = clip.scene(0), clip.scene(clip.frames - 1)
        dx, dy = DIRECTIONS[clip.direction]
        moved = (last.shapes[0].x - first.shapes[0].x, last.shapes[0].y - first.shapes[0].y)
        assert moved == (dx * clip.travel, dy * clip.travel)  # the answer follows from the frames' difference
        if clip.newcomer is not None:  # absent at the start, there at the end
            assert len(first.shapes) == 1 and last.shapes[1] == clip.newcomer
        for t in range(clip.frames):
            for s in clip.scene(t).shapes:  # whole shapes, inside every frame
                assert s.radius <= s.x < 64 - s.radius and s.radius <= s.y < 64 - s.radius
    path = synthesize_motion(tmp_path / "a", 3, seed=1, frames=8)
    again = synthesize_motion(tmp_path / "b", 3, seed=1, frames=8)
    assert path.read_text() == again.read_text()
    questions = json.loads((tmp_path / "a" / "questions.json").read_text())
    assert {q["kind"] for q in questions} == {"direction", "appears"} and check_file(path).ok
    assert frame_count(Video(tmp_path / "a" / questions[0]["video"])) == 8


# -- training, evaluation, serving --------------------------------------------------------------------------------


def test_training_on_videos_skips_and_counts_an_undecodable_one(tiny_towers, tiny_llms, tmp_path):
    from minillava.train.config import TrainConfig
    from minillava.train.loop import train

    data = tmp_path / "motion"
    synthesize_motion(data, 6, frames=8, image_size=32)
    records = json.loads((data / "questions.json").read_text())
    (data / "videos" / "broken.mp4").write_bytes(b"\x00" * 64)
    records.append({**records[0], "id": "broken", "video": "videos/broken.mp4"})
    (data / "train.json").write_text(json.dumps(records))
    config = TrainConfig.from_dict({
        "output_dir": str(tmp_path / "run"), "model": {"vision": tiny_towers["clip"], "llm": tiny_llms["llama"],
                                                       "video": {"frames": 4, "pool": 2}},
        "stages": [{"name": "video", "data": [{"path": str(data / "train.json"), "video_frames": 3}],
                    "projector": {"mode": "full"}, "batch_size": 4, "max_steps": 3, "feature_cache": False}]})
    (summary,) = train(config)
    assert summary.steps == 3 and summary.skipped["by_reason"] == {"encoding": 1}  # its header is read to plan it
    assert "broken.mp4" in summary.skipped["examples"][0]
    assert MiniLlava.from_pretrained(summary.final_dir).config.video == VideoConfig(frames=4, pool=2)


def test_evaluation_answers_video_questions(model, tmp_path):
    from minillava.eval.data import load_samples
    from minillava.eval.runner import evaluate

    path = synthesize_motion(tmp_path, 2, frames=6, image_size=32)
    samples = load_samples(path.parent / "questions.json")
    result = evaluate(model, "vqa", samples, max_new_tokens=3, progress=False)
    assert result.metrics["n"] == 4 and all(r["video"].endswith(".mp4") for r in result.predictions)
    expected = model.generate([build_prompt(samples[0]["question"] + "\nAnswer the question using a single word or "
                                            "phrase.", [Video(samples[0]["video"])])], GenerationConfig(3))[0]
    assert result.predictions[0]["prediction"] == expected.text.strip()


@pytest.fixture(scope="module")
def server(model):
    config = ServeConfig(model_name="tiny", max_images_per_prompt=2, max_videos_per_prompt=1, max_video_bytes=200_000)
    with BackgroundServer(create_app(model, config)) as running:
        yield running


def video_part(data: bytes, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def ask(server, content: list, **extra) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body | extra, timeout=60)


def test_the_api_answers_about_a_video_as_generate_does(server, model, clip_file):
    question = {"type": "text", "text": "Which way does it move?"}
    response = ask(server, [video_part(clip_file.read_bytes()), question],
                   media_io_kwargs={"video": {"num_frames": 5}})
    assert response.status_code == 200, response.text
    expected = model.generate([build_prompt("Which way does it move?", [Video(clip_file, 5)])],
                              GenerationConfig(max_new_tokens=6))[0]
    assert response.json()["choices"][0]["message"]["content"] == expected.text
    assert response.json()["usage"]["prompt_tokens"] == expected.prompt_tokens


def test_the_api_refuses_bad_videos_with_a_4xx_naming_the_part(server, clip_file):
    data = clip_file.read_bytes()
    text = {"type": "text", "text": "What happens?"}
    cases = [
        (ask(server, [video_part(data), text], media_io_kwargs={"video": {"num_frames": 99}}), 400,
         "invalid_video", "media_io_kwargs.video.num_frames"),
        (ask(server, [video_part(b"\x00" * 500), text]), 400, "invalid_video", "messages.0.content.0.video_url.url"),
        (ask(server, [video_part(data), video_part(data), text]), 400, "too_many_videos", "messages"),
        (ask(server, [video_part(data, "image/png"), text]), 400, "invalid_video_url",
         "messages.0.content.0.video_url.url"),
        (ask(server, [video_part(b"\x00" * 300_000), text]), 413, "video_too_large",
         "messages.0.content.0.video_url.url"),
        (ask(server, [video_part(data), text], media_io_kwargs={"video": {"fps": 2}}), 400, None, None),
    ]
    for response, status, code, param in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        if code is not None:
            assert (error["code"], error["param"]) == (code, param), error


def test_two_images_in_one_turn_are_both_seen(server, model, images):
    def image_part(image):
        return {"type": "image_url", "image_url": {"url": data_url(image)}}

    text = {"type": "text", "text": "Are these the same?"}
    answers = []
    for pair in ([images[0], images[1]], [images[0], images[2]]):
        response = ask(server, [image_part(pair[0]), image_part(pair[1]), text])
        assert response.status_code == 200, response.text
        expected = model.generate([build_prompt("Are these the same?", pair)], GenerationConfig(max_new_tokens=6))[0]
        assert response.json()["choices"][0]["message"]["content"] == expected.text
        assert response.json()["usage"]["prompt_tokens"] == expected.prompt_tokens
        answers.append(expected.text)
    assert answers[0] != answers[1]  # the second image is seen, not only the first
    three = ask(server, [image_part(images[0])] * 3 + [text])
    assert three.status_code == 400 and three.json()["error"]["code"] == "too_many_images"


def test_the_local_ui_backend_answers_about_a_video(model, clip_file):
    from minillava.serve.backends import BackendError, LocalChat, Settings

    question = {"type": "text", "text": "What happens?"}
    messages = [{"role": "user", "content": [video_part(clip_file.read_bytes()), question]}]
    reply = LocalChat(model).stream(messages, Settings(max_tokens=5, temperature=0.0))
    expected = model.generate([build_prompt("What happens?", [Video(clip_file)])], GenerationConfig(5))[0]
    assert "".join(reply) == expected.text
    broken = [{"role": "user", "content": [video_part(b"\x00" * 100), question]}]
    with pytest.raises(BackendError, match="not a video"):
        list(LocalChat(model).stream(broken, Settings(max_tokens=5)))


def test_an_anyres_model_sees_each_frame_as_one_view(tiny_towers, tiny_llms, clip_file, images):
    from minillava.model import AnyResConfig

    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"],
                                      anyres=AnyResConfig([[64, 32], [32, 64], [64, 64]]))
    conversation = Conversation([Turn("user", "<image><image> What moved?"), Turn("assistant", "x")],
                                images=[images[0], Video(clip_file, frames=3)])
    batch = model.prepare([conversation])
    image_plan, video_plan = batch.image_plans
    assert image_plan.views > 1 and (video_plan.views, video_plan.tokens) == (3, 3 * 4)  # tiles; frames at 32 px
    assert batch.pixel_values.shape == (image_plan.views + 3, 3, 32, 32)
    loss = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values,
                 image_plans=batch.image_plans).loss
    assert torch.isfinite(loss)
