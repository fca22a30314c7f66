"""The chat page at / driven in headless Chromium (Debian's `chromium`, installed by .ci/run) through
Playwright's Python package: type a message, see the answer stream in with its reasoning block,
press stop; model text never becomes markup."""
from __future__ import annotations

import os
import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
from test_server import ServerProcess, files  # noqa: E402,F401  (files: the module fixture)

CHROMIUM = next((p for p in (os.environ.get("EDGEQWEN_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"))
                 if p and os.path.exists(p)), None)
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("chromium is missing: .ci/run installs Debian's chromium package")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


@pytest.fixture(scope="module")
def page_server(files):
    s = ServerProcess({"thinker": files["thinker"], "tiny": files["tiny"]}, "--max-loaded", "2", "-c", "4096",
                      "--repeat-penalty", "3", key=None)      # the random model's text is then not all blank
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_page_streams_reasoning_and_stops(page_server, browser):
    page = browser.new_page(bypass_csp=True)        # Playwright's waits evaluate strings; the page's CSP forbids that
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    assert page.locator("#model option").all_inner_texts() == ["thinker", "tiny"]
    assert page.locator("#think").is_checked()
    # thinking on: the "thinker" model's answer opens with reasoning; the stop button ends it
    page.fill("#input", "Hello <b>there</b>")
    page.click("#send")
    assert page.locator(".msg.user").inner_text() == "Hello <b>there</b>"       # shown as text
    page.wait_for_function("document.querySelector('.msg.assistant details.reasoning div')?.textContent.length > 20")
    assert page.locator("#stop").is_enabled() and page.locator("#send").is_disabled()
    page.click("#stop")
    page.wait_for_function("document.querySelector('.msg.assistant').dataset.finish === 'stopped'")
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()
    assert "tok/s" in page.locator("#stats").inner_text()
    page_server.wait_idle()                                  # the server dropped the request
    assert page_server.health()["models"]["thinker"]["dropped"] >= 1

    # thinking off, a system prompt, the other model: a whole answer streams to its end
    page.click("#clear")
    page.uncheck("#think")
    page.select_option("#model", "tiny")
    page.click("#toggle-system")
    page.fill("#system", "Answer briefly.")
    page.fill("#max-tokens", "24")
    page.fill("#input", "Say something")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant')?.dataset.finish === 'length'", timeout=120000)
    assert page.locator(".msg.assistant details.reasoning").count() == 0
    assert "tokens" in page.locator("#stats").inner_text()
    assert errors == []
    page.close()


def test_markdown_is_escaped(page_server, browser):
    """The page's markdown renderer on hostile text: tags come out as text, code blocks as <pre>."""
    page = browser.new_page(bypass_csp=True)
    page.goto(page_server.url + "/")
    html = page.evaluate("renderMarkdown('<img src=x onerror=alert(1)> **b** `<i>` ```js\\n<script>x</script>\\n```')")
    assert "<img" not in html and "<script>" not in html and "<i>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<strong>b</strong>" in html
    assert "<pre><code>&lt;script&gt;x&lt;/script&gt;\n</code></pre>" in html
    page.close()


def test_page_csp_blocks_foreign_script(page_server, browser):
    """Served with a nonce CSP: a script without the nonce (as injected markup would be) does not run."""
    page = browser.new_page()
    page.goto(page_server.url + "/")
    page.wait_for_selector("#model option", state="attached")       # the page's own script ran
    ran = page.evaluate("""() => { const s = document.createElement('script');
                                   s.textContent = 'document.body.dataset.injected = "yes"';
                                   document.body.appendChild(s); return document.body.dataset.injected || 'no'; }""")
    assert ran == "no"
    page.close()
