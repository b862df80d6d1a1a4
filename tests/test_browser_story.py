"""The three questions of issue #27 in a real browser (Debian's Chromium via Playwright, one `streamlit run` server for
the module, on the fixture experiment and its planted image-level twin): the compare page states the leak as one
number with its CI; every worst-error card of the best ensemble opens the Grad-CAM panel of that same image with at
least one map; the Overview states the paired verdict of best ensemble vs best single model; and at 800 px the
sidebar starts collapsed and no headline number is cut off. Expected values are recomputed from the predictions."""

import re

import pandas as pd
import pytest

from tools.live import CHROMIUM, chromium, serve, wait_idle

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (`make browser`)")


@pytest.fixture(scope="module")
def story(dashboard_artifacts, tmp_path_factory):
    from planted_experiments import build_leak_pair

    root = build_leak_pair(dashboard_artifacts / "fixture", tmp_path_factory.mktemp("story") / "artifacts")
    with serve(root, "patient") as (url, _), chromium(1440, 1000) as page:
        page.goto(f"{url}/")
        page.wait_for_selector("h1", timeout=120_000)
        yield url, page, root


def open_page(page, url: str, path: str) -> None:
    page.goto(f"{url}{path}")
    page.wait_for_selector("h1", timeout=120_000)
    wait_idle(page)


def test_compare_page_states_the_leak_as_one_number_with_its_ci(story):
    from playwright.sync_api import expect

    url, page, root = story
    patient = pd.read_parquet(root / "patient" / "predictions.parquet")
    image = pd.read_parquet(root / "imagelevel" / "predictions.parquet")
    patient, image = patient[patient["split"] == "test"], image[image["split"] == "test"]
    common = set(patient["image_id"]) & set(image["image_id"])
    # the twin is right on every image it tests, so each run's difference is 1 - its patient-level accuracy there
    part = patient[patient["image_id"].isin(common)]
    expected = (1 - part.assign(ok=part["pred"] == part["label"]).groupby("run_id")["ok"].mean()).mean()
    open_page(page, url, "/experiments?exp=patient&exps=imagelevel&exps=patient")
    card = page.locator(".st-key-cx_leak_accuracy")
    expect(card.locator("[data-testid='stMetricValue']")).to_have_text(f"{expected:+.3f}", timeout=60_000)
    expect(card).to_contain_text(re.compile(r"95% CI [+-]\d\.\d{3} to [+-]\d\.\d{3}"))
    headline = page.locator(".st-key-cx_leak")
    expect(headline).to_contain_text(f"measured on the {len(common)} images")
    expect(headline).to_contain_text(f"{patient['run_id'].nunique()} runs paired")  # soft-best pairs with its soft twin
    expect(page.locator(".st-key-cx_leak_nn_img")).to_contain_text("Same-patient neighbour")


def test_overview_states_the_paired_verdict(story):
    from playwright.sync_api import expect

    url, page, _ = story
    open_page(page, url, "/")
    verdict = page.locator(".st-key-ov_verdict")
    expect(verdict).to_contain_text("Is the best ensemble better than the best single model?", timeout=60_000)
    expect(verdict).to_contain_text(re.compile(r": (better|no clear difference|worse) \(accuracy Δ [+-]\d\.\d{4}, 95% CI"))
    expect(verdict).to_contain_text("McNemar p =")


def test_every_worst_error_card_of_the_best_ensemble_opens_its_own_panel(story):
    from playwright.sync_api import expect

    url, page, _ = story
    open_page(page, url, "/")
    page.locator(".st-key-best_ens_errors button").first.click()
    cards = page.locator("[class*='st-key-br_card_']:not([class*='st-key-br_card_full_'])")  # not the Enlarge buttons
    expect(cards.first).to_be_visible(timeout=60_000)
    wait_idle(page)
    targets = []
    for i in range(cards.count()):
        card = cards.nth(i)
        image_id = card.locator("code").first.inner_text()
        href = card.get_by_role("link", name=re.compile("Grad-CAM panel")).get_attribute("href")
        assert image_id in href, (image_id, href)  # the link carries the image
        targets.append((image_id, href))
    assert targets
    expect(page.locator(".st-key-br_page_bar")).to_contain_text(f"of {len(targets)}")  # every error is on this page
    for image_id, href in targets:
        page.goto(href if href.startswith("http") else f"{url}/{href.lstrip('/')}")
        page.wait_for_selector("h1", timeout=120_000)
        panel = page.locator(".st-key-cam_panel")
        expect(panel).to_be_visible(timeout=60_000)
        expect(page.locator("[data-testid='stMarkdownContainer'] code").first).to_have_text(image_id, timeout=30_000)
        expect(panel.locator("img").first).to_be_visible(timeout=30_000)  # at least one map (tiles stream in after the panel)


def truncated(page) -> list[str]:
    """Texts of headline numbers and their labels (or their inner elements) wider than their box: cut off with an
    ellipsis ("Balanced ac..." above a number is as unreadable as "0..." in its place)."""
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid=stMetricValue], [data-testid=stMetricLabel]')]
        .flatMap(el => [el, ...el.querySelectorAll('*')])
        .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.textContent)""")


def settle(page) -> None:
    """Wait (up to 15 s) for the web fonts and for the headline layout to stop cutting text: a text measured in a
    fallback font, or before its row reflowed, can read as cut off on a loaded machine. A layout that stays cut is
    still caught by the assert after this."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("() => document.fonts.status === 'loaded'", timeout=10_000)
        page.wait_for_function("""() => ![...document.querySelectorAll('[data-testid=stMetricValue], [data-testid=stMetricLabel]')]
            .flatMap(el => [el, ...el.querySelectorAll('*')]).some(el => el.scrollWidth > el.clientWidth + 1)""", timeout=5_000)
    except PlaywrightTimeout:
        pass


def test_at_800_px_the_sidebar_is_collapsed_and_no_headline_is_cut(story):
    from playwright.sync_api import expect

    url, page, _ = story
    page.set_viewport_size({"width": 800, "height": 900})
    try:
        for path in ("/", "/experiments?exp=patient&exps=imagelevel&exps=patient"):
            open_page(page, url, path)
            expect(page.locator("[data-testid='stMetricValue']").first).to_be_visible(timeout=60_000)
            expect(page.locator("[data-testid='stSidebar']")).to_have_attribute("data-collapsed", "true", timeout=15_000)
            settle(page)
            assert not truncated(page), path
    finally:
        page.set_viewport_size({"width": 1440, "height": 1000})
