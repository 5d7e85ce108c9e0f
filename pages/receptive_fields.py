"""Receptive fields: the Receptive Field View (paper §5.2–5.3, Fig. 2-d, Fig. 5). The selected neuron's RF on
the benign and on the adversarial image beside each image's class probabilities, the two vulnerability
maps (bMap, aMap) binarized at a top-% and their IoU with the RFs, the RF threshold, the context images
of the current selection, and the union/intersection of the RFs of the clusters picked on Clustering.
Class names are user text: Markdown gets them through ``text.plain``, the charts through their builders."""
from contextlib import nullcontext

import numpy as np
import streamlit as st

from core import context, image_space, vulnerability
from core import receptive_fields as rf
from core.store import StoreError
from core.ui import neuron_charts as nc
from core.ui import services, session
from core.ui.images import coverage, data_uri, heatmap, map_scale, rf_overlay, show
from core.ui.palette import class_colors
from core.ui.text import number, plain

session.require_app()  # first: a deep link must not run a page outside app.py

SPINNER = "Computing the vulnerability maps (first time for this pair)…"
MODE_LABELS = {"quantile": "quantile (dataset)", "fraction": "fraction of max", "absolute": "absolute"}
SIDES = ("benign", "adversarial")
PER_ROW = 6
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
READING_LABELS = {"own": "its own top images", "counterparts": "counterparts of the benign row"}


def _on_mode(absolute_default) -> None:
    mode = st.session_state["receptive_fields_rf_mode"]
    session.update(rf_mode=mode, rf_value=nc.rf_value(mode, None, absolute_default))


def _on_value(key: str) -> None:
    value = st.session_state[key]
    if value is not None:
        session.update(rf_value=float(value))


def _on_top() -> None:
    session.update(top=st.session_state["receptive_fields_top"] / 100)


def _on_stride() -> None:
    session.update(stride=int(st.session_state["receptive_fields_stride"]))


def _on_set_op() -> None:
    session.update(set_op="intersection" if st.session_state["receptive_fields_set_op"] else "union")


sel = session.require_experiment()

st.header("Receptive fields")
try:
    analysis = services.analysis(sel.experiment)
except StoreError as e:  # removed or damaged since the sidebar listed it
    st.error(plain(e))
    st.stop()
store = analysis.store
if sel.pair is None or not 0 <= sel.pair < analysis.num_pairs:
    st.info("Pick a pair in Image space first: click a prediction-matrix cell, then a pair of the grid.")
    session.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
    st.stop()
if sel.neuron is None or not 0 <= sel.neuron < analysis.num_neurons:
    st.info(f"Pick a neuron of pair #{sel.pair} in Neuron ranking: click it on the chart or type its id.")
    session.page_link("pages/neuron_ranking.py", label="Go to Neuron ranking", icon=":material/leaderboard:")
    st.stop()

pair, j = sel.pair, sel.neuron
classes = store.classes
colors = class_colors(len(classes))
bc, ac = analysis.classes_of(pair)
st.markdown(f"**Neuron {j}** on **pair #{pair}**: {plain(classes[bc])} → {plain(classes[ac])}")

# -- controls --------------------------------------------------------------------------------------------

def _absolute_default() -> float:
    return float(np.mean(analysis.rf_thresholds()))


c_mode, c_value, c_top, c_stride = st.columns([1.5, 1.3, 1.3, 0.9])
session.seed("receptive_fields_rf_mode", sel.rf_mode)
c_mode.radio("RF threshold", rf.THRESHOLD_MODES, format_func=MODE_LABELS.get, horizontal=True,
             key="receptive_fields_rf_mode", on_change=_on_mode, args=(_absolute_default,),
             help=HELP["mode"])
rf_kw = nc.rf_kw(sel, analysis)
value_key = f"receptive_fields_rf_value_{sel.rf_mode}"
if sel.rf_mode == "absolute":
    session.seed(value_key, float(rf_kw["value"]))
    c_value.number_input("Activation above", min_value=0.0, step=0.05, format="%.3f", key=value_key,
                         on_change=_on_value, args=(value_key,), help=HELP["absolute"])
else:
    spec = nc.rf_slider(sel.rf_mode)
    session.seed(value_key, float(spec["default"] if sel.rf_value is None else
                           min(max(sel.rf_value, spec["min_value"]), spec["max_value"])))
    c_value.slider("q (quantile)" if sel.rf_mode == "quantile" else "fraction of the max",
                   spec["min_value"], spec["max_value"], step=spec["step"], key=value_key,
                   on_change=_on_value, args=(value_key,), help=HELP[sel.rf_mode])
session.seed("receptive_fields_top", min(100, max(1, round(sel.top * 100))))  # the slider's bounds
c_top.slider("Vulnerability maps: top %", 1, 100, step=1, key="receptive_fields_top", on_change=_on_top,
             help=HELP["top"])
stride = analysis.map_stride(sel.stride)
session.seed("receptive_fields_stride", stride)
c_stride.selectbox("Map stride", analysis.map_strides, key="receptive_fields_stride", on_change=_on_stride,
                   format_func=lambda s: "1 (exact)" if s == 1 else f"{s} (faster)", help=HELP["stride"])

# -- the pair: images, RFs, probabilities, maps ----------------------------------------------------------
images = dict(zip(SIDES, store.pair_images(pair), strict=True))
masks = {s: analysis.rf_masks_for(pair, s, [j], **rf_kw)[0].numpy() for s in SIDES}
probs = {"benign": np.asarray(store.array("benign_probs")[pair]),
         "adversarial": np.asarray(store.array("adversarial_probs")[pair])}
map_kw = {"stride": stride, "precision": "auto"}
with st.spinner(SPINNER) if not analysis.has_vulnerability_maps(pair, **map_kw) else nullcontext():
    vmaps = dict(zip(("bmap", "amap"), analysis.vulnerability_maps(pair, **map_kw), strict=True))
binary = {w: vulnerability.binarize(m, sel.top) for w, m in vmaps.items()}
matched = {"benign": "bmap", "adversarial": "amap"}
predicted = {"benign": bc, "adversarial": ac}
map_text = {"bmap": f"bMap: where the perturbation lowers P({plain(classes[bc])})",
            "amap": f"aMap: where the perturbation raises P({plain(classes[ac])})"}
change = {"bmap": "drop", "amap": "rise"}
map_verb = {"bmap": "lower", "amap": "raise"}

for side, col in zip(SIDES, st.columns(2, gap="medium"), strict=True):
    with col:
        k = predicted[side]
        st.markdown(f"**{side.capitalize()} image** · predicted **{plain(classes[k])}** "
                    f"({probs[side][k]:.1%})", help=HELP["rf"])
        i1, i2, i3 = st.columns([1, 1, 1.5])
        i1.image(show(images[side], colors[k], uri=True), caption=f"pair #{pair}", width="stretch")
        i2.image(data_uri(rf_overlay(images[side], masks[side])), width="stretch",
                 caption=f"neuron {j}'s RF (outlined) · {coverage(masks[side])} of the pixels")
        with i3:
            st.plotly_chart(nc.probability_figure(probs[side], classes, colors),
                            key=f"receptive_fields_p_{side}", config={"displayModeBar": False})
        w = matched[side]
        m1, m2 = st.columns([1, 1.5])
        # the map over this side's image in grey, its top-% outlined, the colour scale as a strip below
        drawn = heatmap(vmaps[w], mask=binary[w], image=images[side], legend=True)
        m1.image(data_uri(drawn), width="stretch",
                 caption=f"{w[0]}Map, top {sel.top:.0%} outlined · scale: 0 → "
                         f"{number(map_scale(vmaps[w]), '.2g')} ({change[w]} in probability)")
        overlap = float(rf.iou(masks[side], binary[w]))
        m2.metric(f"IoU of the RF with {w[0]}Map", number(overlap, ".3f"), help=HELP["iou"])
        m2.caption(map_text[w] + ".", help=HELP[w])
        info = vulnerability.binarize_info(vmaps[w], sel.top)
        if info.short:  # fewer pixels change the probability than the top-% asks for
            m2.caption(f"Only {number(100 * info.positive_share, '.1f')}% of the pixels {map_verb[w]} the "
                       f"probability here: the outlined mask holds {info.kept} pixels, not the "
                       f"{info.requested} of the top {sel.top:.0%}.", help=HELP["top"])

# -- clusters chosen on the Clustering page --------------------------------------------------------------
if sel.clusters:
    st.subheader("Selected clusters")
    session.seed("receptive_fields_set_op", sel.set_op == "intersection")
    st.toggle("Intersection (off: union)", key="receptive_fields_set_op", on_change=_on_set_op)
    # selected clusters are neuron sets (core.ui.state): no tree is needed to combine their RFs
    n = analysis.num_neurons
    valid = [c for c in sel.clusters if c and c[0] >= 0 and c[-1] < n]
    if not valid:
        st.info("The selected clusters name no neuron of this experiment; pick them again on Clustering.")
    else:
        members = np.unique(np.concatenate([np.asarray(c, dtype=np.int64) for c in valid]))
        combine = rf.intersection if sel.set_op == "intersection" else rf.union
        u1, u2, u3 = st.columns([1, 1, 2])
        for side, c in zip(SIDES, (u1, u2), strict=True):
            combined = combine(analysis.rf_masks_for(pair, side, members.tolist(), **rf_kw)).numpy()
            c.image(data_uri(rf_overlay(images[side], combined)), width="stretch",
                    caption=f"{sel.set_op} on the {side} image · {coverage(combined)} of the pixels")
        u3.markdown(f"**{sel.set_op.capitalize()}** of the RFs of **{len(members)} neurons** "
                    f"({len(valid)} selected cluster{'s' if len(valid) > 1 else ''}):")
        u3.caption(", ".join(map(str, members.tolist())))
        with u3:
            session.page_link("pages/clustering.py", label="Change the clusters",
                              icon=":material/account_tree:")

# -- context images --------------------------------------------------------------------------------------
ctx = st.expander("Context images: this neuron on the top images of the current selection",
                  key="receptive_fields_context", on_change="rerun", icon=":material/photo_library:")
if ctx.open:
    with ctx:
        s1, s2, s3 = st.columns([1.6, 1.6, 0.8])
        sort = s1.radio("Top images by", context.SORTS, horizontal=True, key="receptive_fields_context_sort",
                        format_func={"activation": "the neuron's activation",
                                     "confidence": "prediction confidence"}.get, help=HELP["sort"])
        reading = s2.radio("Adversarial row", tuple(context.READINGS), horizontal=True,
                           key="receptive_fields_context_reading", format_func=READING_LABELS.get,
                           help=HELP["reading"])
        m = int(s3.number_input("How many (m)", 1, 24, 6, key="receptive_fields_context_m",
                                help="How many top images each row lists."))
        ids = image_space.select(store.pairs, sel.cell, sel.lasso)
        scope = "all pairs" if sel.cell is None and sel.lasso is None else "the selected pairs"
        by = "the neuron's activation" if sort == "activation" else "prediction confidence"
        adversarial_row = ("the adversarial images ranked on their own (they may be other pairs than the "
                           "benign row's)" if reading == "own" else
                           "the adversarial counterparts of the benign row's images, in the same order")
        st.caption(f"Top {m} of {scope} ({len(ids)}) by {by}, each with neuron {j}'s RF outlined. "
                   f"Benign row: the benign images ranked by it. Adversarial row: {adversarial_row}. "
                   f"Under each image: pair id · {by} on the image shown.", help=HELP["context"])
        value_col = "activation" if sort == "activation" else "confidence"
        for side in SIDES:
            ranked_by = side if side == "benign" else context.READINGS[reading]
            table, items = context.context_images(analysis, j, ids, m=m, sort=sort, side=side,
                                                  ranked_by=ranked_by, **rf_kw)
            st.markdown(f"**{side.capitalize()}**")
            if not items:
                st.caption("No pair in the selection.")
            for start in range(0, len(items), PER_ROW):
                cols = st.columns(PER_ROW)
                rows = table.iloc[start:start + PER_ROW].iterrows()
                for c, (image, mask), (_, r) in zip(cols, items[start:start + PER_ROW], rows, strict=False):
                    c.image(data_uri(rf_overlay(image, mask)), width="stretch",
                            caption=f"#{int(r['pair'])} · {number(r[value_col], '.3g')}")
