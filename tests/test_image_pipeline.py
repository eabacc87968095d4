"""The image pipeline and the tiny models, run for real on the CPU (a few seconds in all)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from model_setup import tiny_models  # noqa: E402
from runner.images.pipeline import ImagePipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    tiny_models.build(out)
    return out


@pytest.fixture(scope="session")
def pipeline(tiny_dir):
    return ImagePipeline(str(tiny_dir / "tiny-sd"), device="cpu")


def test_defaults_come_from_the_model(pipeline):
    assert pipeline.device == "cpu"
    assert pipeline.default_size == 64
    assert pipeline.default_steps == 4
    assert pipeline.default_guidance == 7.5


@pytest.mark.parametrize("width,height", [(64, 64), (96, 64)])
def test_images_have_the_requested_size(pipeline, width, height):
    images = pipeline.generate("a cat", width=width, height=height, steps=2, seed=0)
    assert [im.size for im in images] == [(width, height)]
    assert images[0].mode == "RGB"


def test_num_images(pipeline):
    images = pipeline.generate("a cat", num_images=2, steps=2, seed=0)
    assert len(images) == 2
    assert images[0].tobytes() != images[1].tobytes()


def test_size_must_be_a_multiple_of_the_vae_factor(pipeline):
    with pytest.raises(ValueError):
        pipeline.generate("a cat", width=60)


def test_same_seed_same_pixels_different_seed_different_pixels(pipeline):
    first = pipeline.generate("a red chair", steps=3, seed=42)[0].tobytes()
    again = pipeline.generate("a red chair", steps=3, seed=42)[0].tobytes()
    other = pipeline.generate("a red chair", steps=3, seed=43)[0].tobytes()
    assert first == again
    assert first != other


def test_on_step_counts_up_to_total(pipeline):
    calls = []
    pipeline.generate("a cat", steps=5, seed=0, on_step=lambda step, total: calls.append((step, total)))
    assert [step for step, _ in calls] == [1, 2, 3, 4, 5]
    assert {total for _, total in calls} == {5}


def test_load_count_counts_constructions_not_generations(tiny_dir, pipeline):
    before = ImagePipeline.load_count
    pipeline.generate("a cat", steps=1, seed=0)
    assert ImagePipeline.load_count == before
    second = ImagePipeline(str(tiny_dir / "tiny-sd"), device="cpu")
    assert ImagePipeline.load_count == before + 1
    assert second.pipe is not pipeline.pipe


def test_build_is_idempotent(tiny_dir, capsys):
    marker = tiny_dir / "tiny-sd" / tiny_models.MARKER
    mtime = marker.stat().st_mtime_ns
    tiny_models.build(tiny_dir)
    assert "skipped" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == mtime


def test_tiny_chat_loads_and_generates(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_dir / "tiny-chat"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size // model.config.num_attention_heads >= 32  # vLLM CPU needs it
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there!"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "Hello there!" in text and text.endswith("<|assistant|>\n")

    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    assert len(new_tokens) == 8
    assert isinstance(tokenizer.decode(new_tokens, skip_special_tokens=True), str)
