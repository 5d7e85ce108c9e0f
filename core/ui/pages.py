"""The app's pages, in one table: key -> (script path, title, icon). ``app.py``'s navigation, the
sidebar's "Next" links and every ``session.page_link`` read it, so a page is renamed or moved here only.

Paths are relative to the folder of ``app.py`` (what ``st.Page``, ``st.page_link`` and AppTest's
``switch_page`` take)."""
from __future__ import annotations

from typing import NamedTuple


class Page(NamedTuple):
    path: str
    title: str
    icon: str


PAGES = {
    "experiments": Page("pages/experiments.py", "Experiments", ":material/science:"),
    "image_space": Page("pages/image_space.py", "Image space", ":material/grid_view:"),
    "neuron_ranking": Page("pages/neuron_ranking.py", "Neuron ranking", ":material/leaderboard:"),
    "receptive_fields": Page("pages/receptive_fields.py", "Receptive fields",
                             ":material/center_focus_strong:"),
    "clustering": Page("pages/clustering.py", "Clustering", ":material/account_tree:"),
    "prepare": Page("pages/prepare.py", "Prepare an experiment", ":material/add_circle:"),
}
DEFAULT = "experiments"  # the page a bare address opens
# the navigation menu's sections, in order
SECTIONS = {"Explore": ("experiments", "image_space", "neuron_ranking", "receptive_fields", "clustering"),
            "Set up": ("prepare",)}


def path(key: str) -> str:
    """The script of page ``key`` (KeyError for an unknown key: a typo must fail the tests)."""
    return PAGES[key].path
