"""The web app in a real headless Chromium against the live control plane and a real runner (the
tiny models): sign in, API keys, a chat whose reply streams in, an image, escaping of whatever a
prompt or a reply holds, another user's session, and CSRF. Screenshots go to test-artifacts/web/."""
from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
from playwright.sync_api import expect

from controlplane.accounts.auth import SECRET_CACHE_SECONDS
from tests.browser import browser, check_no_js_errors, make_web_user, screenshot, signed_in_page  # noqa: F401 (fixtures)
from tests.conftest import freeze, thaw, vllm_server

INJECTION = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">**bold**'


@pytest.fixture()
def web_user(live_db):
    return make_web_user(live_db)


def test_sign_in_create_copy_and_use_a_key(browser, live_server, web_user):
    page = signed_in_page(browser, live_server, web_user)
    page.get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    expect(page.locator("#keys tbody tr")).to_have_count(1)  # the test's own key
    page.get_by_label("Name of a new key").fill("laptop <b>")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key-value")
    expect(key).to_have_text(re.compile(r"^hl-"))
    new_key = key.text_content()
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == new_key
    # The reference's lines, filled in with this server and the new key.
    curl = page.locator("code.curl").first.text_content()
    assert curl.startswith(f"curl {live_server}/api/v1/sessions") and f"Bearer {new_key}" in curl
    expect(page.locator("#keys tbody tr")).to_have_count(2)
    names = page.locator("#keys tbody input[name=name]")
    expect(names.nth(1)).to_have_value("laptop <b>")  # a name is text, not markup
    assert page.locator("#keys tbody b").count() == 0
    screenshot(page, "account-new-key")
    names.nth(1).fill("desk")
    page.locator("#keys tbody tr").nth(1).get_by_role("button", name="Rename").click()
    expect(page.locator("#keys tbody input[name=name]").nth(1)).to_have_value("desk")
    assert [k["name"] for k in requests.get(f"{live_server}/api/v1/api_keys", headers=web_user.headers,
                                            timeout=10).json()] == ["test", "desk"]
    r = requests.get(f"{live_server}/api/v1/sessions", headers={"Authorization": f"Bearer {new_key}"}, timeout=10)
    assert r.status_code == 200
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete key desk").click()
    expect(page.locator("#keys tbody tr")).to_have_count(1)
    time.sleep(SECRET_CACHE_SECONDS + 0.5)  # the other gunicorn worker may have remembered it that long
    assert requests.get(f"{live_server}/api/v1/sessions", headers={"Authorization": f"Bearer {new_key}"},
                        timeout=10).status_code == 401
    page.context.close()


def test_a_chat_streams_its_reply_and_never_runs_what_a_prompt_holds(browser, live_server, runner, web_user):
    page = signed_in_page(browser, live_server, web_user)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New session").click()
    page.get_by_label("Message").fill(INJECTION)
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))
    user_turn = page.locator("li.message.user").first
    expect(user_turn).to_contain_text('<script>window.pwned = 1</script><img src="x"')  # shown as typed
    assert page.locator("#messages script, #messages img").count() == 0
    reply = page.locator("li.message.system").last
    try:
        expect(reply).to_have_attribute("data-state", "complete", timeout=120_000)
    finally:  # on a failure, say what the API had: a page behind it, or the reply itself
        check_no_js_errors(page)
        sid = page.url.rsplit("/", 1)[1]
        print("the API's view:", [(i["state"], i["finished"], i["status"]) for i in requests.get(
            f"{live_server}/api/v1/sessions/{sid}", headers=web_user.headers, timeout=10).json()["interactions"]])
    assert reply.locator(".body").text_content().strip()

    # The next reply, watched as it arrives: its text must show before the reply is complete.
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const last = [...document.querySelectorAll('li.message.system')].pop();
            if (last) window.__seen.push([last.dataset.state, last.querySelector('.body p, .body pre, .body ul, .body ol, .body h3') ? last.querySelector('.body').textContent.length : 0]);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    page.get_by_label("Message").fill("Tell me a long story about " + INJECTION)
    page.get_by_role("button", name="Send").click()
    expect(page.locator("li.message.system")).to_have_count(2)
    expect(page.locator("li.message.system").last).to_have_attribute("data-state", "complete", timeout=120_000)
    seen = page.evaluate("window.__seen")
    assert any(state != "complete" and length > 0 for state, length in seen), seen[-20:]
    assert page.evaluate("window.pwned") is None
    screenshot(page, "chat")
    page.context.close()


def test_a_running_chat_is_stopped_then_run_again_from_the_page(browser, live_server, runner, web_user):
    page = signed_in_page(browser, live_server, web_user)
    server = vllm_server(runner)
    freeze(server)  # the reply cannot finish before Stop is pressed
    try:
        page.get_by_role("navigation", name="Main").get_by_role("link", name="New session").click()
        page.get_by_label("Message").fill("Count to twenty")
        page.get_by_role("button", name="Send").click()
        page.wait_for_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))
        expect(page.get_by_role("button", name="Run again")).to_be_hidden()
        page.get_by_role("button", name="Stop").click()
        reply = page.locator("li.message.system").last
        expect(reply).to_have_attribute("data-state", "error", timeout=30_000)
        expect(reply).to_contain_text("cancelled by the user")
        expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    finally:
        thaw(server)
    page.get_by_role("button", name="Run again").click()
    expect(reply).to_have_attribute("data-state", "complete", timeout=120_000)
    assert reply.locator(".body").text_content().strip()
    expect(page.get_by_role("button", name="Run again")).to_be_hidden()
    check_no_js_errors(page)
    screenshot(page, "chat-stopped-and-run-again")
    page.context.close()


def test_replies_render_markdown_but_never_markup(browser, live_server, web_user):
    """What a model replies goes through the page's Markdown renderer (markdown-it's tokens, drawn
    as elements by markdown.js): code, emphasis, lists, tables and links become elements, and tags,
    scripts, handlers and addresses that are not http or https stay text."""
    page = signed_in_page(browser, live_server, web_user)
    created = requests.post(f"{live_server}/api/v1/sessions", headers=web_user.headers, timeout=10,
                            data={"mode": "inference", "type": "text", "input": "hi"}).json()
    page.goto(f"/sessions/{created['id']}")
    assert page.evaluate("typeof window.markdownit") == "function"  # the vendored library, loaded
    reply = "\n\n".join([
        INJECTION,
        "# A title",
        "```python\nprint('<b>hi</b>')\n```",
        '```x" onmouseover="window.pwned = 3\nno language\n```',
        "- [a link](javascript:alert(1))\n- [ok](https://example.org/)\n  - nested *one*\n  - [mail](mailto:a@example.org)",
        "3. three\n4. four",
        "| left | right |\n|:-----|------:|\n| ~~gone~~ | `<i>x</i>` |",
        "> quoted <iframe src=x></iframe>\n\n---",
        "![a cat](https://example.org/cat.png) ![inline](data:image/png;base64,AAAA)",
        'line one  \nline <a href="javascript:alert(1)">two</a>',
    ])
    html = page.evaluate("""(text) => {
        const turn = document.createElement('div'), box = document.createElement('div');
        turn.className = 'message';  // styled as a reply is
        box.className = 'body';
        box.id = 'rendered';
        box.append(window.helixMarkdown.render(text));
        turn.append(box);
        document.getElementById('main').append(turn);
        return box.innerHTML;
    }""", reply)
    page.wait_for_timeout(200)  # time for a handler to run, if one had been created
    assert page.evaluate("window.pwned") is None
    rendered = page.locator("#rendered")
    assert rendered.locator("script, img, iframe, i, b, [onerror], [onmouseover]").count() == 0
    assert rendered.locator("strong").text_content() == "bold"
    assert rendered.locator("h3").text_content() == "A title"  # the page's own headings are h1 and h2
    assert rendered.locator("pre code").nth(0).text_content() == "print('<b>hi</b>')"
    assert rendered.locator("pre code").nth(0).get_attribute("class") == "language-python"
    assert rendered.locator("pre code").nth(1).text_content() == "no language"
    assert rendered.locator("pre code").nth(1).get_attribute("class") is None  # not a safe class name
    # Only http and https addresses are links, each opening apart from the page; an image is a link.
    links = rendered.locator("a")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
        "https://example.org/", "https://example.org/cat.png"]
    assert links.nth(0).get_attribute("rel") == "noopener noreferrer nofollow"
    assert links.nth(0).get_attribute("target") == "_blank"
    assert links.nth(1).text_content() == "a cat"
    assert rendered.locator("ul > li").nth(0).text_content() == "[a link](javascript:alert(1))"
    assert rendered.locator("ul > li > ul > li").count() == 2  # the nested list
    assert rendered.locator("ul > li > ul > li em").text_content() == "one"
    assert rendered.locator("ul > li > ul > li").nth(1).text_content() == "mail"
    assert rendered.locator("ol").get_attribute("start") == "3"
    assert rendered.locator("ol > li").all_text_contents() == ["three", "four"]
    assert rendered.locator("table th").all_text_contents() == ["left", "right"]
    assert rendered.locator("table td s").text_content() == "gone"
    assert rendered.locator("table td code").text_content() == "<i>x</i>"
    assert rendered.locator("table td").nth(1).evaluate("n => getComputedStyle(n).textAlign") == "right"
    assert rendered.locator("blockquote").text_content().strip() == "quoted <iframe src=x></iframe>"
    assert rendered.locator("hr").count() == 1 and rendered.locator("br").count() == 1
    assert "inline" in rendered.text_content()
    assert 'line <a href="javascript:alert(1)">two</a>' in rendered.text_content()
    assert "&lt;script&gt;" in html
    check_no_js_errors(page)
    screenshot(page, "reply-markdown")
    page.context.close()


def test_an_image_session_shows_its_picture(browser, live_server, runner, web_user):
    page = signed_in_page(browser, live_server, web_user, width=390, height=844)  # a phone's width
    page.goto("/sessions/new?kind=image")
    page.get_by_label("Describe the picture").fill("flying fish")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f-]{36}$"))
    image = page.locator("li.message.system img").first
    expect(image).to_be_visible(timeout=120_000)
    page.wait_for_function("() => { const i = document.querySelector('li.message.system img'); return i && i.complete && i.naturalWidth > 0; }")
    screenshot(page, "image-phone")
    page.context.close()


def test_another_users_session_is_a_not_found_page(browser, live_server, live_db, web_user):
    other = make_web_user(live_db)
    theirs = requests.post(f"{live_server}/api/v1/sessions", headers=other.headers, timeout=10,
                           data={"mode": "inference", "type": "text", "input": "private"}).json()
    page = signed_in_page(browser, live_server, web_user)
    response = page.goto(f"/sessions/{theirs['id']}")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert "private" not in page.content()
    screenshot(page, "not-found")
    page.context.close()


def test_a_request_without_the_csrf_token_is_refused(browser, live_server, web_user):
    page = signed_in_page(browser, live_server, web_user)
    statuses = page.evaluate("""async () => {
        const bare = await fetch('/api/v1/api_keys', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                     body: JSON.stringify({name: 'forged'})});
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const good = await fetch('/api/v1/api_keys', {method: 'POST', body: JSON.stringify({name: 'real'}),
                                                      headers: {'Content-Type': 'application/json', 'X-CSRFToken': token}});
        return [bare.status, (await bare.json()).error, good.status];
    }""")
    assert statuses[0] == 403 and "CSRF" in statuses[1] and statuses[2] == 201
    page.context.close()


def test_an_unreachable_server_is_said_on_the_page(browser, live_server, web_user):
    page = signed_in_page(browser, live_server, web_user)
    page.goto("/account")
    expect(page.locator("#keys tbody tr")).to_have_count(1)
    page.context.set_offline(True)
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#banner")).to_contain_text("Cannot reach the server")
    screenshot(page, "offline")
    page.context.close()


def test_the_admin_page_shows_runners_queues_and_decisions(browser, live_server, runner, live_db):
    from controlplane.accounts import store as accounts
    from tests.browser import PASSWORD, WebUser

    row = accounts.create_user(live_db, f"admin-{uuid.uuid4().hex[:8]}@example.com", is_admin=True, password=PASSWORD)
    admin = WebUser(row, accounts.create_api_key(live_db, row["id"], "test")[1])
    requests.post(f"{live_server}/api/v1/sessions", headers=admin.headers, timeout=10,
                  data={"mode": "inference", "type": "text", "input": "hi"}).raise_for_status()
    page = signed_in_page(browser, live_server, admin)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    expect(page.locator("#runners tbody")).to_contain_text("runner-main")
    expect(page.locator("#runners tbody")).to_contain_text("alive")
    expect(page.locator("#queues tbody tr").first).not_to_contain_text("No queues yet", timeout=10_000)
    expect(page.locator("#decisions tbody")).to_contain_text("runner-main", timeout=30_000)
    expect(page.locator("#plans tbody tr").first).to_contain_text("default")
    check_no_js_errors(page)
    screenshot(page, "admin")
    page.context.close()


def test_the_usage_page_shows_tokens_by_day_beside_the_plans_limits(browser, live_server, runner, live_db):
    from datetime import datetime, timezone

    from controlplane.accounts import store as accounts
    from controlplane.usage import plans
    from tests.browser import PASSWORD, WebUser
    from tests.conftest import wait_for_session

    plan = f"web-{uuid.uuid4().hex[:6]}"
    plans.set_plan(live_db, plan, plans.Limits(requests_per_minute=100, images_per_day=5))
    row = accounts.create_user(live_db, f"usage-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD, plan=plan)
    user = WebUser(row, accounts.create_api_key(live_db, row["id"], "test")[1])
    r = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers, timeout=10,
                      data={"mode": "inference", "type": "text", "input": "hi", "max_tokens": "8"})
    assert r.status_code == 201 and r.headers["x-ratelimit-limit-requests"] == "100"
    reply = wait_for_session(live_server, user, r.json()["id"])["interactions"][-1]
    used = reply["usage"]
    page = signed_in_page(browser, live_server, user)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name=f"Your plan: {plan}")).to_be_visible()
    expect(page.locator("#limits")).to_contain_text("requests per minute: 100")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    cells = page.locator("#usage-days tbody tr").first.locator("td")
    expect(cells.nth(0)).to_have_text(today)
    expect(cells.nth(2)).to_have_text(str(used["prompt_tokens"]))
    expect(cells.nth(3)).to_have_text(str(used["completion_tokens"]))
    expect(page.locator("#usage-chart svg path.series")).to_have_count(2)
    check_no_js_errors(page)
    screenshot(page, "usage")
    page.context.close()


def test_a_reply_holding_markup_streams_in_as_text(browser, live_server, services, runner_token, web_user):
    """A reply delivered the way a runner delivers one (its update route: deltas, then the final
    message) full of HTML and script: shown live, as text, and nothing runs."""
    from shared.runners import RUNNER_HEADER
    from tests.conftest import hold_job, runner_auth

    runner_id, model = f"html-{uuid.uuid4().hex[:6]}", "helix/markup-writer"
    headers = runner_auth(runner_token)
    r = requests.post(f"{live_server}/api/v1/runner/register", headers=headers, timeout=10,
                      json={"runner_id": runner_id, "models": {"text": [model]}, "info": {}})
    assert r.status_code == 200, r.text
    s = requests.post(f"{live_server}/api/v1/sessions", headers=web_user.headers, timeout=10,
                      data={"mode": "inference", "type": "text", "input": "write some HTML", "model_name": model}).json()
    reply_id = s["interactions"][-1]["id"]
    hold_job(services["redis_url"], reply_id, runner_id)  # as its worker would, taking the job
    update = f"{live_server}/api/v1/runner/sessions/{s['id']}/interactions/{reply_id}"
    headers[RUNNER_HEADER] = runner_id

    page = signed_in_page(browser, live_server, web_user)
    page.goto(f"/sessions/{s['id']}")
    reply = page.locator("li.message.system")
    expect(reply).to_have_attribute("data-state", "waiting")
    page.wait_for_timeout(500)  # the page's event stream is open by now
    first = '<script>window.pwned = 1</script> <img src="x" onerror="window.pwned = 2"> '
    requests.post(update, headers=headers, json={"runner": runner_id, "delta": first}, timeout=10).raise_for_status()
    expect(reply).to_contain_text('<img src="x" onerror="window.pwned = 2">')  # streamed in, as text
    expect(reply).to_have_attribute("data-state", "waiting")
    final = first + "and `<b>code</b>` with **bold**"
    requests.post(update, headers=headers, timeout=10, json={"runner": runner_id, "state": "complete",
                                                             "message": final, "final": True}).raise_for_status()
    expect(reply).to_have_attribute("data-state", "complete")
    expect(reply.locator("code")).to_have_text("<b>code</b>")
    expect(reply.locator("strong")).to_have_text("bold")
    assert reply.locator("script, img, b").count() == 0
    page.wait_for_timeout(200)
    assert page.evaluate("window.pwned") is None
    check_no_js_errors(page)
    screenshot(page, "reply-with-markup")
    page.context.close()
