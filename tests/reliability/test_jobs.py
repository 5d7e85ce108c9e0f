"""Prepare jobs started from the app run in processes of their own (core.jobs): a real prepare can be
cancelled from the Prepare page and then resumed to a complete store; the server process is never the one
that crashes (tests/app/test_prepare_page.py covers OOM kills, SIGBUS, bugs and the job limit)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.presets import preset
from core.store import Store
from tests.helpers import displayed

pytestmark = pytest.mark.reliability
APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NVE_CACHE", str(tmp_path))
    return tmp_path


def test_cancel_from_the_page_then_resume(cache):
    cfg = preset("demo", ["data.per_class=40", "prepare.tsne_perplexity=10"])
    job = jobs.start(cfg, "cancelled", cache)
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("pages/prepare.py")
    at.session_state["prepare_job"] = "cancelled"  # the session that started it
    at.run()
    assert not at.exception
    for _ in range(600):  # until the child has real work done (the attack writes chunk by chunk)
        if job.stage in ("attack", "features", "statistics") or job.finished:
            break
        job.wait(0.2)
    assert job.running, job.error
    at.button(key="prepare_cancel").click().run()
    assert job.wait(30) and job.cancelled
    assert job.error.startswith("cancelled") and not (cache / "cancelled").exists()
    assert (cache / ".partial-cancelled").is_dir()  # the finished work is kept
    at.run()
    said = [displayed(i.value) for i in at.info]
    assert any(s.startswith("Preparing cancelled was cancelled. What was finished is kept")
               for s in said), said

    again = jobs.start(cfg, "cancelled", cache)
    assert again.wait(300), again.describe()
    assert again.ok, again.error
    assert any("resuming the interrupted prepare" in line for line in again.log), list(again.log)
    store = Store(cache / "cancelled")
    assert store.counts["n_images"] == 400 and len(store) > 0
    assert not (cache / ".partial-cancelled").exists()
