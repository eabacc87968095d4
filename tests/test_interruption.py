"""Stopping the tiny diffusers pipeline mid-step, for real on the CPU."""

import os
import threading
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from model_setup import tiny_models  # noqa: E402
from runner.images.interruption import Interrupted, interruptible, models_of  # noqa: E402
from runner.images.pipeline import ImagePipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    tiny_models.build(out, ["tiny-sd"])
    return ImagePipeline(str(out / "tiny-sd"), device="cpu")


def hooks(pipeline) -> int:
    return sum(len(m._forward_pre_hooks) for model in models_of(pipeline.pipe) for m in model.modules())


def test_a_stop_lands_mid_step_within_a_fraction_of_a_second(pipeline):
    steps_done, stop = [], threading.Event()
    started = time.monotonic()
    set_at: list[float] = []

    def stop_during_second_step(step, total):
        steps_done.append((step, time.monotonic()))
        if step == 1:  # one 1024x1024 step takes ~0.6 s here, far longer loaded: stop mid-step 2
            first_step = steps_done[0][1] - started
            threading.Timer(min(0.3, first_step / 3), lambda: (set_at.append(time.monotonic()), stop.set())).start()

    with pytest.raises(Interrupted):
        with interruptible(pipeline.pipe, stop) as check:
            pipeline.generate("a slow sunset", width=1024, height=1024, steps=50, seed=1,
                              on_step=stop_during_second_step)
    latency = time.monotonic() - set_at[0]
    print(f"stop landed {latency * 1000:.0f} ms after it was set; {check.calls} checks,"
          f" longest stretch between two {check.longest * 1000:.0f} ms")
    assert [s for s, _ in steps_done] == [1]  # step 2 never ended: the stop came mid-step
    assert latency < 0.5
    assert hooks(pipeline) == 0


def test_the_pipeline_works_as_before_after_a_stop(pipeline):
    before = pipeline.generate("a red chair", steps=3, seed=42)[0].tobytes()
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted), interruptible(pipeline.pipe, stop):
        pipeline.generate("a red chair", steps=3, seed=42)
    assert hooks(pipeline) == 0
    assert pipeline.generate("a red chair", steps=3, seed=42)[0].tobytes() == before
    # and with a watch that is never set, the same pixels again
    with interruptible(pipeline.pipe, threading.Event()) as check:
        assert pipeline.generate("a red chair", steps=3, seed=42)[0].tobytes() == before
    assert check.calls > 100


def test_sliced_attention_equals_whole_attention():
    import torch.nn.functional as F

    from runner.images import interruption

    q, k, v = (torch.randn(2, 8, 4096, 8) for _ in range(3))
    whole = interruption._original_sdpa(q, k, v)
    stop = threading.Event()

    class NoModels:
        components: dict = {}

    with interruptible(NoModels(), stop) as check:
        sliced = F.scaled_dot_product_attention(q, k, v)
    assert check.calls > 2  # it really ran in slices
    assert torch.allclose(whole, sliced, atol=1e-5)
    stop.set()
    with pytest.raises(Interrupted), interruptible(NoModels(), threading.Event()) as check:
        check.stop.set()
        F.scaled_dot_product_attention(q, k, v)
    # outside `interruptible` it is plain attention again, in any thread
    assert torch.equal(F.scaled_dot_product_attention(q, k, v), whole)
