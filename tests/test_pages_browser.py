"""The pages in a real browser: headless Chromium (Debian's, driven by Playwright) against
gunicorn serving the default model. The playground's numbers are checked against the API's own
vectors, and /docs' "Try it out" must get a 200. Screenshots go to each test's tmp_path (and to
$ZEROTH_SCREENSHOTS too when set, which is how docs/img/ is refreshed)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from real_server import OPENAI_NAMES, OTHER_NAME, ROOT, api_vectors, b64_vector, serving

from zeroth.launch import GunicornServer

pytestmark = pytest.mark.slow

KEY = "sk-browser-test"
# Known to work in this closed network: without the background-networking flags Chromium's
# own connections (updates, sync) are refused and slow every page down.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
QUERIES = ["What is the capital of France?", "How do I bake bread?"]
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "Knead the dough, let it rise, then bake it in a hot oven.",
    "The recipe needs flour, water, salt and yeast.",
    "The stock market fell sharply on Monday.",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("chromium is missing: `make browser` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, default_model: Path) -> Iterator[GunicornServer]:
    with serving(tmp_path_factory.mktemp("keyed"), env={"ZEROTH_API_KEYS": KEY}) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, default_model: Path) -> Iterator[GunicornServer]:
    with serving(tmp_path_factory.mktemp("open"), workers=1) as server:
        yield server


class Watched:
    """A page, with what it asked of other origins and what went wrong in it."""

    def __init__(self, browser, origin: str, viewport: dict) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.origin = origin
        self.elsewhere: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", self._console)

    def _request(self, request) -> None:
        if not request.url.startswith((self.origin + "/", "data:")):
            self.elsewhere.append(request.url)

    def _console(self, message) -> None:
        # The first model list or description without a key is refused: that is the point.
        if message.type == "error" and "401" not in message.text:
            self.errors.append(f"console: {message.text}")

    def check_clean(self) -> None:
        assert self.elsewhere == [], "the page reached outside the server"
        assert self.errors == []

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser) -> Iterator:
    pages: list[Watched] = []

    def open_page(server: GunicornServer, viewport: dict = DESKTOP) -> Watched:
        page = Watched(browser, server.url, viewport)
        pages.append(page)
        return page

    yield open_page
    for page in pages:
        page.close()


def screenshot(page, tmp_path: Path, name: str, **kwargs) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), **kwargs)
    assert path.stat().st_size > 10_000  # a real picture, not an empty page
    if os.environ.get("ZEROTH_SCREENSHOTS"):
        out = Path(os.environ["ZEROTH_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


# --- the playground ---------------------------------------------------------------------------


def fill_and_embed(page, model: str, queries: list[str], documents: list[str]) -> None:
    page.wait_for_selector("body[data-models=loaded]")
    page.select_option("#model", model)
    page.fill("#queries", "\n".join(queries))
    page.fill("#documents", "\n".join(documents))
    page.evaluate("document.body.dataset.state = ''")
    page.click("#embed")
    page.wait_for_selector("body[data-state=done]")


def shown(page) -> dict:
    """What the playground shows: matrix cells, rankings and the stats line."""
    return page.evaluate(
        """() => ({
        cells: [...document.querySelectorAll('#heatmap td')].map(td => ({
            q: +td.dataset.q, d: +td.dataset.d, cos: +td.dataset.cos, text: td.textContent})),
        ranking: [...document.querySelectorAll('#ranking section')].map(s => ({
            q: +s.dataset.q,
            docs: [...s.querySelectorAll('li')].map(li => +li.dataset.d),
            scores: [...s.querySelectorAll('li .score')].map(e => e.textContent)})),
        model: document.getElementById('stat-model').textContent,
        texts: +document.getElementById('stat-texts').textContent,
        tokens: +document.getElementById('stat-tokens').textContent,
        dims: +document.getElementById('stat-dims').textContent,
        latency: document.getElementById('stat-latency').textContent,
    })"""
    )


def check_playground_numbers(
    page, url: str, model: str, queries: list[str], documents: list[str], key: str | None
) -> None:
    """The page's numbers against the server's own vectors for the same texts: every cosine
    (to 1e-9, both sides compute in float64 from the same float32 values), every rounded
    figure shown, each query's ranking, the token count and the dimensions."""
    vectors, usage = api_vectors(url, model, queries + documents, key)
    v = vectors.astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    expected = v[: len(queries)] @ v[len(queries) :].T
    seen = shown(page)
    assert len(seen["cells"]) == expected.size
    for cell in seen["cells"]:
        want = expected[cell["q"], cell["d"]]
        assert abs(cell["cos"] - want) <= 1e-9, f"cosine q{cell['q']} d{cell['d']}: {cell}"
        assert abs(float(cell["text"]) - want) <= 0.0005 + 1e-9, f"shown {cell}"
    assert [r["q"] for r in seen["ranking"]] == list(range(len(queries)))
    for r in seen["ranking"]:
        order = list(np.argsort(-expected[r["q"]], kind="stable")[:5])
        assert r["docs"] == order, f"ranking of query {r['q']}"
        assert r["scores"] == [f"{expected[r['q'], d]:.3f}" for d in order]
    assert seen["model"] == model
    assert seen["texts"] == len(queries) + len(documents)
    assert seen["tokens"] == usage["prompt_tokens"]
    assert seen["dims"] == vectors.shape[1]
    assert seen["latency"].endswith(" ms") and float(seen["latency"][:-3]) > 0


def test_playground_with_a_key_matches_the_api(keyed, watched, tmp_path: Path) -> None:
    for viewport, name in ((DESKTOP, "playground.png"), (PHONE, "playground-phone.png")):
        w = watched(keyed, viewport)
        page = w.page
        page.goto(keyed.url + "/")
        # Keys are on: the page asks for one, and lists the models once it has it.
        page.wait_for_selector("#key-row:not([hidden])")
        assert page.locator("#model option").count() == 0
        page.fill("#key", "sk-wrong")
        page.press("#key", "Enter")
        # (a selector, not wait_for_function: the page's CSP forbids the eval that polls it)
        page.wait_for_selector("#model-note:has-text('refused')")
        page.fill("#key", KEY)
        page.press("#key", "Enter")
        fill_and_embed(page, OPENAI_NAMES[0], QUERIES, DOCUMENTS)
        check_playground_numbers(page, keyed.url, OPENAI_NAMES[0], QUERIES, DOCUMENTS, KEY)
        # What a person reads: Paris first for the capital, the dough first for the bread.
        assert shown(page)["ranking"][0]["docs"][0] == 0
        assert shown(page)["ranking"][1]["docs"][0] == 2
        # The key is in no address and no storage.
        assert KEY not in page.url
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
        assert KEY not in page.evaluate("document.cookie")
        if viewport is PHONE:
            # Nothing wider than the phone but the matrix, which scrolls inside its own box.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(page, tmp_path, name, full_page=True)
        w.check_clean()


def test_playground_open_server_other_model_and_self_comparison(
    open_server, watched, tmp_path: Path
) -> None:
    w = watched(open_server)
    page = w.page
    page.goto(open_server.url + "/")
    page.wait_for_selector("body[data-models=loaded]")
    assert page.locator("#key-row").is_hidden()  # no keys, no key field
    models = page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert sorted(models) == sorted([*OPENAI_NAMES, OTHER_NAME])
    fill_and_embed(page, OTHER_NAME, QUERIES, DOCUMENTS)
    check_playground_numbers(page, open_server.url, OTHER_NAME, QUERIES, DOCUMENTS, None)
    # No queries: the documents against each other, each one's own pair left out of its ranking.
    fill_and_embed(page, OTHER_NAME, [], DOCUMENTS)
    seen = shown(page)
    vectors, _ = api_vectors(open_server.url, OTHER_NAME, DOCUMENTS)
    v = vectors.astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    assert len(seen["cells"]) == len(DOCUMENTS) ** 2
    for cell in seen["cells"]:
        assert abs(cell["cos"] - sims[cell["q"], cell["d"]]) <= 1e-9
    for r in seen["ranking"]:
        assert r["q"] not in r["docs"] and len(r["docs"]) == len(DOCUMENTS) - 1
    # An error from the API is shown in its words, not swallowed.
    page.fill("#documents", "")
    page.click("#embed")
    assert "at least one document" in page.inner_text("#error")
    w.check_clean()


def test_the_check_fails_when_the_page_and_the_api_differ(keyed, watched) -> None:
    """Playwright hands the page a response in which one document's vector is negated: the
    page then shows other numbers than the API's, and check_playground_numbers must say so."""
    w = watched(keyed)
    page = w.page

    def perturb(route) -> None:
        response = route.fetch()
        payload = response.json()
        item = payload["data"][len(QUERIES)]  # the first document
        item["embedding"] = base64.b64encode((-b64_vector(item["embedding"])).tobytes()).decode()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        route.fulfill(response=response, headers=headers, body=json.dumps(payload))

    page.route("**/v1/embeddings", perturb)
    page.goto(keyed.url + "/")
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    fill_and_embed(page, OPENAI_NAMES[0], QUERIES, DOCUMENTS)
    with pytest.raises(AssertionError, match="cosine q0 d0"):
        check_playground_numbers(page, keyed.url, OPENAI_NAMES[0], QUERIES, DOCUMENTS, KEY)
    # And untouched, the very same check passes on the same page.
    page.unroute("**/v1/embeddings")
    fill_and_embed(page, OPENAI_NAMES[0], QUERIES, DOCUMENTS)
    check_playground_numbers(page, keyed.url, OPENAI_NAMES[0], QUERIES, DOCUMENTS, KEY)


# --- /docs --------------------------------------------------------------------------------------

OPERATION = "#operations-default-createEmbedding"


def example_request() -> dict:
    """What "Try it out" starts from: the request example in the OpenAPI description."""
    spec = yaml.safe_load((ROOT / "zeroth" / "api" / "openapi.yaml").read_text())
    body = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    return body["application/json"]["example"]


def test_docs_try_it_out_with_a_key(keyed, watched, tmp_path: Path) -> None:
    for viewport, name in ((DESKTOP, "api-docs.png"), (PHONE, "api-docs-phone.png")):
        w = watched(keyed, viewport)
        page = w.page
        page.goto(keyed.url + "/docs")
        page.wait_for_selector("#key-box:not([hidden])")
        page.fill("#key", "sk-wrong")
        page.click("#key-load")
        page.wait_for_selector("#key-error:has-text('refused')")
        page.fill("#key", KEY)
        page.click("#key-load")
        page.wait_for_selector(OPERATION)
        assert "POST" in page.inner_text(f"{OPERATION} .opblock-summary")
        assert "/v1/embeddings" in page.inner_text(f"{OPERATION} .opblock-summary")
        page.click(f"{OPERATION} .opblock-summary")
        page.wait_for_selector(f"{OPERATION} button.try-out__btn")
        if viewport is DESKTOP:
            screenshot(page, tmp_path, name, full_page=False)
        page.click(f"{OPERATION} button.try-out__btn")
        page.click(f"{OPERATION} button.execute")
        status = page.wait_for_selector(
            f"{OPERATION} .live-responses-table tbody .response-col_status"
        )
        assert status.inner_text().strip() == "200"
        body = json.loads(
            page.inner_text(
                f"{OPERATION} .live-responses-table tbody .response-col_description pre"
            )
        )
        # The description's example, sent with a model this server serves: the API's vectors.
        texts = example_request()["input"]
        expected, usage = api_vectors(keyed.url, body["model"], texts, KEY)
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert body["usage"] == usage
        if viewport is PHONE:
            status.evaluate("el => el.closest('.responses-inner').scrollIntoView()")
            screenshot(page, tmp_path, name, full_page=False)
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
        w.check_clean()


def test_docs_open_server_needs_no_key(open_server, watched) -> None:
    w = watched(open_server)
    page = w.page
    page.goto(open_server.url + "/docs")
    page.wait_for_selector(OPERATION)
    assert page.locator("#key-box").is_hidden()
    for operation in ("listModels", "retrieveModel", "health", "ready"):
        assert page.locator(f"#operations-default-{operation}").count() == 1
    w.check_clean()
