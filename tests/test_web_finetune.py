"""The reference's text fine-tune in a real headless Chromium: documents uploaded from the
new-session page (with its progress bar), the stages shown live, the review step's editor (pairs
written and saved), the start button, the loss chart, the before/after evaluation and the knowledge
report; and a retrieval-only fine-tune that chats at once and shows the sources of each reply."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser import browser, check_no_js_errors, make_web_user, screenshot, signed_in_page  # noqa: F401
from tests.conftest import TEXT_MODEL
from tests.test_finetune_flow import DOCUMENT, _pairs


@pytest.mark.timeout(600)
def test_text_finetune_with_review_loss_chart_and_evaluation(browser, live_server, runner, live_db, tmp_path):
    user = make_web_user(live_db)
    (tmp_path / "textfile-1.txt").write_text(DOCUMENT)
    (tmp_path / "textfile-2.txt").write_text("This is the text for the second file.")
    page = signed_in_page(browser, live_server, user)
    page.goto("/sessions/new?kind=text-finetune")
    page.get_by_label("Model").select_option(TEXT_MODEL)
    page.get_by_label("Documents").set_input_files([tmp_path / "textfile-1.txt", tmp_path / "textfile-2.txt"])
    expect(page.get_by_label("Let me review the questions and answers before training")).to_be_checked()
    page.locator("summary", has_text="Training settings").click()
    page.get_by_label("Epochs").fill("6")
    page.get_by_label("Learning rate").fill("0.003")
    page.get_by_role("button", name="Start fine-tune").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))
    expect(page.locator("#stages li")).to_have_count(6)  # indexing for retrieval too: both ways, by default

    # The review step: the stage is shown as current and the editor opens.
    expect(page.locator('#stages li[data-stage="edit_questions"]')).to_have_class(re.compile("current"), timeout=240_000)
    expect(page.get_by_role("button", name="Start training")).to_be_visible()
    screenshot(page, "finetune-review")
    for remove in page.locator("#pairs fieldset.pair button").all()[::-1]:  # the tiny model's pairs are noise
        remove.click()
    for n, pair in enumerate(_pairs()):
        page.get_by_role("button", name="Add a pair").click()
        page.locator(f"#q-{n}").fill(pair["question"])
        page.locator(f"#a-{n}").fill(pair["answer"])
    page.get_by_role("button", name="Save pairs").click()
    expect(page.locator("#review-status")).to_have_text("Saved 9 pairs.")
    page.get_by_role("button", name="Start training").click()

    # Training: the loss chart appears and grows; then the evaluation, question by question.
    expect(page.locator("#loss-chart svg path.series-0")).to_be_visible(timeout=300_000)
    expect(page.locator('#stages li[data-stage="complete"]')).to_have_class(re.compile("done"), timeout=300_000)
    expect(page.locator("#evaluation-table tbody tr")).to_have_count(3)
    expect(page.locator("#evaluation-summary")).to_contain_text("held-out questions")
    first = page.locator("#evaluation-table tbody tr").first
    assert any(q in first.text_content() for q in (p["question"] for p in _pairs()))
    assert page.locator("#loss-chart svg path.series-1").count() == 1  # the validation loss too
    assert "Training loss by step" in page.locator("#loss-chart svg title").text_content()
    # The knowledge report: four ways scored, and the one the chats use.
    expect(page.locator("#knowledge-table tbody tr")).to_have_count(4)
    expect(page.locator("#knowledge-table tbody tr.chosen")).to_have_count(1)
    expect(page.locator("#knowledge-chosen")).to_contain_text("the way that scored best")
    expect(page.locator("#evaluation-table thead th")).to_have_count(6)
    expect(page.get_by_label("Message")).to_be_visible()  # the adapter is ready to chat
    check_no_js_errors(page)
    screenshot(page, "finetune-complete")
    page.context.close()


@pytest.mark.timeout(300)
def test_a_retrieval_only_fine_tune_chats_at_once_and_shows_its_sources(browser, live_server, runner, live_db,
                                                                         tmp_path):
    from tests.test_knowledge_flow import DOCUMENT as OBSERVATORY

    user = make_web_user(live_db)
    (tmp_path / "quillon.txt").write_text(OBSERVATORY)
    page = signed_in_page(browser, live_server, user)
    page.goto("/sessions/new?kind=text-finetune")
    page.get_by_label("Model").select_option(TEXT_MODEL)
    page.get_by_label("Documents").set_input_files([tmp_path / "quillon.txt"])
    page.get_by_label("Way to learn").select_option("retrieval")
    page.get_by_role("button", name="Start fine-tune").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))
    # Read, indexed, done: no questions, no training.
    expect(page.locator("#stages li")).to_have_count(3)
    expect(page.locator('#stages li[data-stage="complete"]')).to_have_class(re.compile("done"), timeout=120_000)
    expect(page.locator("#ft-status")).to_contain_text("ready: chats answer from")
    page.get_by_label("Message").fill("Who founded the Quillon Observatory?")
    page.get_by_role("button", name="Send").click()
    reply = page.locator("#messages li.message.system").last
    expect(reply.locator(".sources")).to_contain_text("Answered by: Retrieval", timeout=60_000)
    expect(reply.get_by_role("list", name="Sources").locator("li").first).to_contain_text("quillon.txt, chunk 0")
    check_no_js_errors(page)
    screenshot(page, "retrieval-sources")
    page.context.close()


@pytest.mark.timeout(600)
def test_image_finetune_with_captions_shows_its_samples(browser, live_server, runner, live_db, tmp_path):
    from tests.test_image_finetune_flow import IMAGES

    user = make_web_user(live_db)
    for name, data in IMAGES.items():
        (tmp_path / name).write_bytes(data)
    page = signed_in_page(browser, live_server, user)
    page.goto("/sessions/new?kind=image-finetune")
    page.get_by_label("Images").set_input_files([tmp_path / name for name in IMAGES])
    page.get_by_label("Caption for red-blue.png").fill("a red and blue <i>flag</i>")
    page.locator("summary", has_text="Training settings").click()
    page.get_by_label("Training steps").fill("20")
    page.get_by_role("button", name="Start fine-tune").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))
    expect(page.locator("#stages li")).to_have_count(2)
    expect(page.locator("#sample-images img")).to_have_count(2, timeout=300_000)
    page.wait_for_function("() => [...document.querySelectorAll('#sample-images img')].every(i => i.complete && i.naturalWidth > 0)")
    expect(page.locator("#sample-images figcaption").first).to_have_text("a red and blue <i>flag</i>")
    expect(page.locator("#loss-chart svg path.series-0")).to_be_visible()
    expect(page.get_by_label("Describe another picture")).to_be_visible()
    check_no_js_errors(page)
    screenshot(page, "image-finetune-complete")
    page.context.close()
