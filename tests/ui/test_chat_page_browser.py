"""The chat page in a real browser (Debian's chromium driven by Playwright): ask, watch the steps stream,
read the cited answer, follow a citation, reload and find the thread; untrusted text renders inert."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path("/tmp/deepscout-ui-screenshots")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture
def page(tmp_path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 1280, "height": 800},
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
        page.errors = errors
        yield page
        context.close()


def ask(page: Any, question: str) -> None:
    page.fill("#question", question)
    page.click("#ask")


def test_ask_watch_steps_follow_a_citation_and_find_the_thread_after_reload(
    page, live_server, fake_model
) -> None:
    fake_model.token_delay = 0.05
    SCREENSHOTS.mkdir(exist_ok=True)
    page.goto(live_server)
    ask(page, "Who wrote Dracula?")
    page.wait_for_selector("#steps li.step.queries")
    page.wait_for_selector("#steps li.step.source")
    page.screenshot(path=str(SCREENSHOTS / "streaming.png"))
    page.wait_for_selector(".message.assistant a.cite", timeout=20_000)
    assert page.inner_text(".message.assistant") == "Bram Stoker wrote Dracula [1]."
    assert page.inner_text("#status") == "Done"
    citation = page.locator(".message.assistant a.cite").first
    assert citation.get_attribute("href") == "#source-1"
    citation.click()
    assert page.evaluate("location.hash").startswith("#source-1")
    assert page.locator("#source-1 a.title").inner_text() in {"Dracula", "Bram Stoker"}
    assert "Stoker" in page.locator("#source-1 .excerpt").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "answer.png"))

    thread_hash = page.evaluate("location.hash")
    page.goto(live_server)  # a fresh load: the thread is listed
    page.wait_for_selector("#threads li")
    assert page.locator("#threads li .thread-title").first.inner_text() == "Who wrote Dracula?"
    page.locator("#threads li .thread-title").first.click()
    page.wait_for_selector(".message.assistant a.cite")
    assert page.evaluate("location.hash").startswith("#thread=") or thread_hash
    assert page.locator(".message.user").first.inner_text() == "Who wrote Dracula?"
    page.wait_for_selector("#steps li.step.source")  # the finished job's steps, replayed
    page.click("#theme")
    assert page.evaluate("document.documentElement.dataset.theme") in {"dark", "light"}
    page.screenshot(path=str(SCREENSHOTS / "reloaded.png"))
    page.click("#threads li .delete")
    page.wait_for_selector("#threads li", state="detached")
    assert page.locator(".message").count() == 0
    assert page.errors == []


def test_untrusted_documents_titles_and_answers_render_inert(page, live_server, fake_model) -> None:
    fake_model.answer = (
        "Evil page says <script>window.__xss=7</script> and <img src=x onerror=window.__xss=8> "
        'and [click](javascript:window.__xss=9) and "><svg onload=window.__xss=10> [1].'
    )
    page.goto(live_server)
    ask(page, "What does the evil page say?")
    page.wait_for_selector(".message.assistant a.cite", timeout=20_000)
    page.wait_for_timeout(500)
    answer = page.locator(".message.assistant")
    assert "<script>" in answer.inner_text()  # shown as text, not run
    assert page.evaluate("window.__xss") is None
    assert (
        page.locator(".message.assistant script, .message.assistant img, .message.assistant svg").count() == 0
    )
    hrefs = page.eval_on_selector_all("a", "links => links.map(link => link.href)")
    assert not [href for href in hrefs if href.lower().startswith("javascript:")]
    titles = page.locator("#sources a.title").all_inner_texts()
    assert any("onerror" in title for title in titles)  # the evil title is text
    assert page.locator("#sources img, #sources script, #sources svg").count() == 0
    page.reload()
    page.wait_for_selector(".message.assistant a.cite")
    assert page.evaluate("window.__xss") is None
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "xss.png"))
    assert page.errors == []


def test_with_tokens_the_page_uses_the_token_given_and_shows_only_its_threads(
    page, serve_app, make_settings, registry, corpus
) -> None:
    url = serve_app(make_settings(api_tokens=["alice-token", "bob-token"]), registry)
    page.goto(url)
    page.wait_for_selector("#status >> text=missing bearer token")
    page.fill("#token", "alice-token")
    page.dispatch_event("#token", "change")
    ask(page, "Who wrote Dracula?")
    page.wait_for_selector(".message.assistant a.cite", timeout=20_000)
    page.locator("#source-1 a.title").click()  # a local document: its whole text, fetched with the token
    page.wait_for_selector("#source-1 .excerpt.whole")
    assert "Stoker" in page.locator("#source-1 .excerpt").inner_text()
    page.fill("#token", "bob-token")
    page.dispatch_event("#token", "change")
    page.wait_for_timeout(500)
    assert page.locator("#threads li").count() == 0
    assert page.errors == []


@pytest.mark.slow
def test_the_page_runs_a_question_on_the_embedded_smollm2(
    page, serve_app, tmp_path, corpus, own_smollm2
) -> None:
    from deepscout.model_runtime.chat import BackendRegistry
    from deepscout.settings import Settings

    registry = BackendRegistry()
    registry.register("smollm2", lambda argument, settings: own_smollm2(), takes_argument=False)
    url = serve_app(Settings(home=tmp_path / "home", model="smollm2"), registry)
    page.goto(url)
    ask(page, "Who wrote Dracula?")
    page.wait_for_selector("#steps li.step.source", timeout=120_000)
    page.wait_for_selector("#status >> text=Done", timeout=300_000)
    assert page.inner_text(".message.assistant").strip()
    assert page.locator("#sources li").count() >= 1
    for link in page.locator(".message.assistant a.cite").all():
        target = link.get_attribute("href") or ""
        assert page.locator(target).count() == 1  # every citation points at a listed source
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "smollm2.png"))
    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.locator(".message.user").first.inner_text() == "Who wrote Dracula?"
    assert page.errors == []
