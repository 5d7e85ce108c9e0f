"""The Receptive Field View (paper §5.2–5.3, Fig. 2-d, Fig. 5) as data: ``rf_view`` gives the heading
and the controls' values; ``pair_view``, for the selected neuron and pair, each image with the neuron's
RF, its class probabilities, its vulnerability map (bMap on the benign image, aMap on the adversarial
one) binarized at the top share and the map's IoU with the RF, plus the union/intersection of the
selected clusters' RFs; ``context_view`` the context images (§5.3). Pictures are data URIs
(``core.ui.images``), texts are final (class names through ``text.plain``), so the page only places
them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import context, image_space, vulnerability
from core import receptive_fields as rf
from core.ui import neuron_charts as nc
from core.ui.images import coverage, data_uri, heatmap, map_scale, rf_overlay, show
from core.ui.palette import class_colors
from core.ui.text import number, plain
from core.ui.views import map_settings
from core.ui.views.selected_clusters import SelectedRFs, selected_rfs

SIDES = ("benign", "adversarial")
MAP_OF = {"benign": "bmap", "adversarial": "amap"}
_CHANGE = {"bmap": "drop", "amap": "rise"}
_VERB = {"bmap": "lower", "amap": "raise"}
SORT_LABELS = {"activation": "the neuron's activation", "confidence": "prediction confidence"}
MODE_LABELS = {"quantile": "quantile (dataset)", "fraction": "fraction of max", "absolute": "absolute"}
READING_LABELS = {"own": "its own top images", "counterparts": "counterparts of the benign row"}
# Plain-words help for the controls and measures (the "?" next to each), for a reader who does not code.
HELP = {
    "mode": "How the neuron's receptive field (RF), the part of the image it responds to, is cut out: its "
            "activation map is enlarged to the image's size and the pixels above a threshold are kept.\n\n"
            "- **quantile (dataset)**: one threshold per neuron for every image: the level the neuron "
            "exceeds on only the top (1 − q) share of its activations over the benign images of all "
            "the experiment's pairs. A neuron that is weak on this image gets a small or empty RF, so "
            "RFs compare across images.\n"
            "- **fraction of max**: the pixels where the neuron reaches at least this fraction of its own "
            "peak on this image: every active neuron gets an RF, however weak.\n"
            "- **absolute**: the pixels above a fixed activation value, the same for every neuron.",
    "quantile": "q: the RF keeps the pixels where the neuron is above its q-quantile over the benign "
                "images of all the experiment's pairs. 0.9 (the default) keeps the neuron's top-10% "
                "activation level; a higher q gives smaller RFs.",
    "fraction": "The RF keeps the pixels where the neuron reaches at least this fraction of its highest "
                "value on this image: 0.5 keeps where it is at half its peak or more; higher gives smaller "
                "RFs.",
    "absolute": "The RF keeps the pixels where the neuron's (enlarged) activation is above this value. "
                "The default is the average of the neurons' quantile thresholds.",
    "top": "The vulnerability maps are binarized for the IoU: this share of the image's pixels, those "
           "with the largest values, is kept (outlined on the map). Pixels whose value is 0 or below are "
           "never kept: there, swapping in the adversarial pixels did not help the attack.",
    "stride": "The maps are computed by swapping one small square of the benign image for the same "
              "square of the adversarial image at a time, on a grid of positions this many pixels "
              "apart. 1 computes every position (exact, slowest); 2 costs a quarter and fills each "
              "2×2 block with its corner's value.",
    "bmap": "bMap (benign map): for each pixel, how much the benign class's probability drops when the "
            "small square around it is replaced by the adversarial image's pixels. Coloured yellow "
            "(small drop) to red (the largest drop on this image, the number under the map); "
            "uncoloured: no drop. The outline marks the top share of pixels.",
    "amap": "aMap (adversarial map): for each pixel, how much the adversarial class's probability rises "
            "when the small square around it is replaced by the adversarial image's pixels. Coloured "
            "yellow (small rise) to red (the largest rise on this image, the number under the map); "
            "uncoloured: no rise. The outline marks the top share of pixels.",
    "iou": "Intersection over union: the pixels in both the neuron's RF and the map's outlined top "
           "share, divided by the pixels in either. 1: the neuron looks exactly where the attack works; "
           "0: they do not overlap (or one is empty).",
    "rf": "The cyan outline (black on its outside edge, so it shows on dark and on bright images) and "
          "the light cyan tint mark the neuron's RF; the rest of the image is left as it is.",
    "context": "The top images of the current selection (the prediction-matrix cell or the lasso of "
               "Image space; all pairs when nothing is selected) for this neuron, each with the neuron's "
               "RF outlined, as evidence of what the neuron captures.",
    "sort": "the neuron's activation: the images that excite the neuron most (its average activation "
            "over the image); prediction confidence: the images the model is surest of (the probability "
            "of the image's predicted class).",
    "reading": "The paper (Fig. 5) can be read two ways. **Its own top images**: the adversarial images "
               "are ranked on their own, so the two rows may show different pairs. **Counterparts of "
               "the benign row**: the adversarial versions of exactly the benign row's images, in the "
               "same order, to compare the neuron's RF before and after the attack image by image.",
}


@dataclass(frozen=True)
class SideView:
    """One image of the pair: what the page shows in its column."""
    side: str
    title: str           # Markdown: "Benign image · predicted **cat** (97.0%)"
    picture: str         # the image in its predicted class's colour frame
    rf_picture: str      # the image with the neuron's RF outlined
    rf_caption: str
    probabilities: object  # the class probabilities' chart (neuron_charts.probability_figure)
    map_name: str        # "bmap" or "amap"
    map_picture: str     # the map over the image in grey, its top share outlined, the scale below
    map_caption: str
    map_text: str        # what the map is, in words
    iou: float           # of the RF with the binarized map
    short: str | None    # said when fewer pixels change the probability than the top share asks for


@dataclass(frozen=True)
class RFView:
    """The page's heading and controls (cheap: drawn before the maps are computed)."""
    pair: int
    neuron: int
    title: str                   # Markdown
    rf_kw: dict                  # the RF threshold (Analysis mode/value keywords)
    stride: int                  # the map stride in use
    strides: tuple[int, ...]     # the strides offered


@dataclass(frozen=True)
class PairView:
    """The pair's two images with the neuron's RF and the maps, and the selected clusters' RFs."""
    sides: dict[str, SideView]
    clusters: SelectedRFs | None  # None: no cluster selected
    cluster_pictures: dict[str, tuple[str, str]]  # side -> (the clusters' combined RF, its caption)


def absolute_default(analysis) -> float:
    """The absolute threshold's default: the mean of the neurons' quantile thresholds."""
    return float(np.mean(analysis.rf_thresholds()))


def rf_view(analysis, sel) -> RFView:
    """The Receptive fields page's heading and controls for ``sel`` (pair and neuron checked by the
    page)."""
    pair, j, classes = sel.pair, sel.neuron, analysis.store.classes
    bc, ac = analysis.classes_of(pair)
    return RFView(pair=pair, neuron=j, rf_kw=nc.rf_kw(sel, analysis),
                  stride=map_settings(analysis, sel).stride, strides=analysis.map_strides,
                  title=f"**Neuron {j}** on **pair #{pair}**: {plain(classes[bc])} → {plain(classes[ac])}")


def pair_view(analysis, sel) -> PairView:
    """What the Receptive fields page draws under its controls for ``sel``. Computes the pair's
    vulnerability maps the first time (seconds): see ``views.maps_ready``."""
    store, pair, j = analysis.store, sel.pair, sel.neuron
    classes = store.classes
    colors = class_colors(len(classes))
    bc, ac = analysis.classes_of(pair)
    rf_kw = nc.rf_kw(sel, analysis)
    vmaps = dict(zip(("bmap", "amap"), analysis.vulnerability_maps(pair, map_settings(analysis, sel)),
                     strict=True))
    predicted = {"benign": bc, "adversarial": ac}
    map_text = {"bmap": f"bMap: where the perturbation lowers P({plain(classes[bc])})",
                "amap": f"aMap: where the perturbation raises P({plain(classes[ac])})"}
    sides = {}
    images = dict(zip(SIDES, store.pair_images(pair), strict=True))  # read once for every picture
    for side, image in images.items():
        k, w = predicted[side], MAP_OF[side]
        probs = np.asarray(store.array(f"{side}_probs")[pair])
        mask = analysis.rf_masks_for(pair, side, [j], **rf_kw)[0].numpy()
        binary = vulnerability.binarize(vmaps[w], sel.top)
        info = vulnerability.binarize_info(vmaps[w], sel.top)
        short = None
        if info.short:
            short = (f"Only {number(100 * info.positive_share, '.1f')}% of the pixels {_VERB[w]} the "
                     f"probability here: the outlined mask holds {info.kept} pixels, not the "
                     f"{info.requested} of the top {sel.top:.0%}.")
        sides[side] = SideView(
            side=side, title=f"**{side.capitalize()} image** · predicted **{plain(classes[k])}** "
                             f"({probs[k]:.1%})",
            picture=show(image, colors[k], uri=True),
            rf_picture=data_uri(rf_overlay(image, mask)),
            rf_caption=f"neuron {j}'s RF (outlined) · {coverage(mask)} of the pixels",
            probabilities=nc.probability_figure(probs, classes, colors),
            map_name=w, map_picture=data_uri(heatmap(vmaps[w], mask=binary, image=image, legend=True)),
            map_caption=f"{w[0]}Map, top {sel.top:.0%} outlined · scale: 0 → "
                        f"{number(map_scale(vmaps[w]), '.2g')} ({_CHANGE[w]} in probability)",
            map_text=map_text[w] + ".", iou=float(rf.iou(mask, binary)), short=short)
    clusters = selected_rfs(analysis, pair, sel.clusters, sel.set_op, rf_kw) if sel.clusters else None
    cluster_pictures = {side: (data_uri(rf_overlay(images[side], mask)),
                               f"{sel.set_op} on the {side} image · {coverage(mask)} of the pixels")
                        for side, mask in (clusters.masks.items() if clusters else ())}
    return PairView(sides=sides, clusters=clusters, cluster_pictures=cluster_pictures)


@dataclass(frozen=True)
class ContextView:
    caption: str                                      # what the rows are
    rows: dict[str, list[tuple[str, str]]]            # side -> [(picture, caption)]


def context_view(analysis, sel, sort: str, reading: str, m: int) -> ContextView:
    """The context images (§5.3, Fig. 5) of the selected neuron: the top ``m`` pairs of the current
    selection (cell or lasso; all pairs without one) by ``sort``, benign row ranked by itself, the
    adversarial row by ``reading`` (``core.context.READINGS``), each with the neuron's RF outlined."""
    j, rf_kw = sel.neuron, nc.rf_kw(sel, analysis)
    ids = image_space.select(analysis.store.pairs, sel.cell, sel.lasso)
    scope = "all pairs" if sel.cell is None and sel.lasso is None else "the selected pairs"
    by = SORT_LABELS[sort]
    adversarial_row = ("the adversarial images ranked on their own (they may be other pairs than the "
                       "benign row's)" if reading == "own" else
                       "the adversarial counterparts of the benign row's images, in the same order")
    caption = (f"Top {m} of {scope} ({len(ids)}) by {by}, each with neuron {j}'s RF outlined. "
               f"Benign row: the benign images ranked by it. Adversarial row: {adversarial_row}. "
               f"Under each image: pair id · {by} on the image shown.")
    rows = {}
    for side in SIDES:
        ranked_by = side if side == "benign" else context.READINGS[reading]
        table, items = analysis.context_images(j, ids, m=m, sort=sort, side=side, ranked_by=ranked_by,
                                               **rf_kw)
        rows[side] = [(data_uri(rf_overlay(image, mask)), f"#{int(p)} · {number(value, '.3g')}")
                      for (image, mask), p, value in zip(items, table["pair"], table[sort], strict=True)]
    return ContextView(caption, rows)
