"""The experiment list in a real browser: what a user sees after `make run`."""


def test_experiment_list_renders_in_chromium(browser, app_url, cifar20_store):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(app_url)
    page.get_by_role("heading", name="Experiments").wait_for(timeout=30_000)
    page.get_by_text("Pairs to explore").wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "Clean accuracy" in body and "Attack success" in body
    assert str(cifar20_store.counts["n_success"]) in body
    # usable at 1280×800 without horizontal scrolling
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.close()
