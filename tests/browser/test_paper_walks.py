"""The paper's three case studies, clicked end to end in headless Debian Chromium, on the demo and on a
store of the standard-trained (confident) ResNet56 on real CIFAR-10 test images:

- §6.1.2 image perturbation: a prediction-matrix cell, the grid sorted by L2, its first pair, neurons
  ranked by IoU with bMap, the top neuron, its RFs and maps, its context images (``walk.walk``);
- §6.1.3 neuron perturbation: the grid sorted by the drop of the benign probability (exact on a
  confident model), its first pair, neurons ranked by band gap, both ends of the order and their RFs;
- §6.1.4 bottom-up: the cluster above a neuron, two levels up, union and intersection, one level back
  down; top-down: the cluster of the neurons that see nothing (the "dead" neurons, merged at height 0),
  clicked on the dendrogram.

Expected values come from the core library; every step leaves a screenshot in test-output/browser/
(prefix ``walks-<store>-``) and any browser error fails the test.
"""
import re

import numpy as np
import pytest

from core import clustering, image_space, neuron_measures
from core.analysis import Analysis
from core.ui import neuron_charts as nc
from core.ui.state import NEURON_SORTS, Selection, encode_set
from tests.browser.walk import (
    TIMEOUT,
    _click_point,
    _idle,
    _nav,
    _select,
    _shot,
    _wait_sidebar,
    _wait_text,
    open_page,
    pick_first_pair,
    unexpected_errors,
    walk,
)

DEFAULTS = Selection()


@pytest.fixture
def page(browser):
    pg = open_page(browser)
    yield pg
    pg.close()


def _button(pg, key: str) -> None:
    _idle(pg)
    pg.locator(f".st-key-{key} [data-testid^=stBaseButton]").first.click()  # (2nd: its help icon)
    _idle(pg)


def neuron_perturbation(pg, store, an: Analysis, cell, shots: str) -> dict:
    """§6.1.3: the cell's pair with the largest benign-probability drop; both ends of the band-gap order."""
    _nav(pg, "Image space")
    pg.wait_for_selector("[data-testid=stVegaLiteChart] svg path[aria-label]", timeout=TIMEOUT)
    _select(pg, "image_space_sort", image_space.SORTS["benign_drop"])
    pair = pick_first_pair(pg, store, cell, "benign_drop")
    _shot(pg, shots, "8-grid-by-benign-drop")

    _nav(pg, "Neuron ranking")
    pg.wait_for_selector(".st-key-neuron_ranking_chart .js-plotly-plot", timeout=TIMEOUT)
    _select(pg, "neuron_ranking_sort", NEURON_SORTS["band_gap"])
    measures = an.neuron_measures(pair, interval=DEFAULTS.interval, coverage=DEFAULTS.coverage)
    order = neuron_measures.rank(nc.sort_values("band_gap", measures, None))
    left, right = int(order[0]), int(order[-1])
    for end, name in ((left, "left"), (right, "right")):
        _click_point(pg, ".st-key-neuron_ranking_chart", "regions", end)
        _wait_sidebar(pg, f"Neuron {end}")
        _wait_text(pg, rf"Neuron {end}: rank {1 if end == left else len(order)} of {len(order)}")
        _shot(pg, shots, f"9-band-gap-{name}-end")
        _nav(pg, "Receptive fields")
        pg.wait_for_function("() => document.querySelectorAll('[data-testid=stMain] [data-testid=stImage]')"
                             ".length >= 6", timeout=TIMEOUT)
        _wait_text(pg, rf"[Nn]euron {end}\b")
        _shot(pg, shots, f"10-rf-{name}-end")
        if name == "left":
            _nav(pg, "Neuron ranking")
            pg.wait_for_selector(".st-key-neuron_ranking_chart .js-plotly-plot", timeout=TIMEOUT)
    return {"pair": pair, "left": left, "right": right}


def hierarchy(pg, store, an: Analysis, pair: int, neuron: int, shots: str) -> dict:
    """§6.1.4 on ``pair``: bottom-up from the selected ``neuron`` (its cluster, two levels up, union and
    intersection, one level down), then top-down: the dead-neuron cluster clicked on the dendrogram."""
    _nav(pg, "Clustering")
    pg.wait_for_selector(".st-key-clustering_dendrogram .js-plotly-plot", timeout=TIMEOUT)
    Z = an.linkage(pair, distance=DEFAULTS.distance, method=DEFAULTS.method)
    if re.search(r"Clusters: ", pg.locator("[data-testid=stSidebar]").inner_text()):
        _button(pg, "clustering_clear")
    ancestors = clustering.nodes_containing(Z, neuron)
    sizes = [len(clustering.subtree(Z, v)) for v in ancestors[:3]]
    _button(pg, "clustering_parent")                      # its cluster: the node above the neuron
    _wait_text(pg, rf"(Union|Intersection) of {sizes[0]} neurons?' RFs")
    _shot(pg, shots, "11-cluster-of-the-neuron")
    for level in (2, 3):                                  # two levels up: two presses
        _button(pg, "clustering_parent")
        _wait_text(pg, rf"(Union|Intersection) of {sizes[level - 1]} neurons?' RFs")
    _wait_text(pg, rf"climbed 3 levels up: a cluster of {sizes[2]} neurons")
    _wait_sidebar(pg, f"Clusters: 1 set(s), {sizes[2]} neurons")
    for op in ("union", "intersection"):
        pg.locator(".st-key-clustering_set_op").get_by_text(op, exact=True).click()
        _wait_text(pg, rf"{op.capitalize()} of {sizes[2]} neurons?' RFs")
        _shot(pg, shots, f"12-two-levels-up-{op}")
    assert f"clusters={encode_set(clustering.subtree(Z, ancestors[2]))}" in pg.url
    _button(pg, "clustering_down")
    _wait_text(pg, rf"Intersection of {sizes[1]} neurons?' RFs")

    # top-down: the neurons that see nothing merge at height 0; their node is clicked on the chart
    _button(pg, "clustering_clear")
    _wait_text(pg, "Click dendrogram nodes")
    rf_kw = nc.rf_kw(DEFAULTS, an)
    images = store.pair_images(pair)
    masks = [an.rf_masks(pair, side, **rf_kw) for side in ("benign", "adversarial")]
    dead = clustering.blind_neurons(images, masks)
    if len(dead) == 0:
        return {"sizes": sizes, "dead": 0}
    node = clustering.cluster_node(Z, dead)
    assert node is not None, "with the L2 distance the dead neurons are one cluster"
    _click_point(pg, ".st-key-clustering_dendrogram", "nodes" if node >= an.num_neurons else "neurons", node)
    _wait_text(pg, rf"Intersection of {len(dead)} neurons?' RFs")
    _wait_sidebar(pg, f"Clusters: 1 set(s), {len(dead)} neurons")
    assert re.search(r"covers (0%|<1%)", pg.locator("[data-testid=stMain]").inner_text()), \
        "dead neurons see nothing: their intersection covers no pixel"
    _shot(pg, shots, "13-top-down-dead-neurons")
    return {"sizes": sizes, "dead": len(dead)}


def _walks(pg, url: str, store, name: str) -> dict:
    an = Analysis(store)
    shots = f"walks-{name}-"
    chosen = walk(pg, url, store, shots=shots)               # §6.1.2
    matrix = image_space.prediction_matrix(store.pairs, len(store.classes))
    cell = tuple(int(v) for v in np.unravel_index(np.argsort(-matrix, axis=None, kind="stable")[0],
                                                  matrix.shape))
    perturbation = neuron_perturbation(pg, store, an, cell, shots)  # §6.1.3
    tree = hierarchy(pg, store, an, perturbation["pair"], perturbation["right"], shots)  # §6.1.4
    assert not unexpected_errors(pg), "browser errors:\n" + "\n".join(unexpected_errors(pg))
    return {**chosen, **perturbation, **tree}


def test_paper_walks_on_the_demo(page, demo_url, demo_store):
    out = _walks(page, demo_url, demo_store, "demo")
    assert out["sizes"][0] < out["sizes"][2] < Analysis(demo_store).num_neurons  # nested, not the root
    assert out["dead"] > 0, "the demo's pairs have neurons that see nothing (§6.1.4's top-down walk)"


def test_paper_walks_on_a_confident_resnet56(page, cifar56_url, cifar56_store):
    # the model is confident: some benign probabilities are exactly 1.0 in float32
    assert (cifar56_store.pairs["benign_prob"].to_numpy() == 1.0).any()
    _walks(page, cifar56_url, cifar56_store, "resnet56")
