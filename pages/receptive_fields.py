"""Receptive fields: the Receptive Field View (paper §5.2–5.3, Fig. 2-d, Fig. 5). The selected neuron's RF on
the benign and on the adversarial image beside each image's class probabilities, the two vulnerability
maps (bMap, aMap) binarized at a top-% and their IoU with the RFs, the RF threshold, the context images
of the current selection, and the union/intersection of the RFs of the clusters picked on Clustering.
Class names are user text: Markdown gets them through ``text.plain``, the charts through their builders."""
from contextlib import nullcontext

import numpy as np
import streamlit as st

from core import clustering, context, image_space, vulnerability
from core import receptive_fields as rf
from core.store import StoreError
from core.ui import neuron_charts as nc
from core.ui import services, session
from core.ui.images import heatmap, rf_overlay, show
from core.ui.palette import class_colors
from core.ui.text import plain

session.require_app()  # first: a deep link must not run a page outside app.py

SPINNER = "Computing the vulnerability maps (first time for this pair)…"
MODE_LABELS = {"quantile": "quantile (dataset)", "fraction": "fraction of max", "absolute": "absolute"}
SIDES = ("benign", "adversarial")
PER_ROW = 6


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
    st.page_link("pages/image_space.py", label="Go to Image space", icon=":material/grid_view:")
    st.stop()
if sel.neuron is None or not 0 <= sel.neuron < analysis.num_neurons:
    st.info(f"Pick a neuron of pair #{sel.pair} in Neuron ranking: click it on the chart or type its id.")
    st.page_link("pages/neuron_ranking.py", label="Go to Neuron ranking", icon=":material/leaderboard:")
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
             help="quantile: pixels where the neuron's upsampled map exceeds its q-quantile over the "
                  "benign images of the store; fraction: at least this fraction of its maximum on the "
                  "image; absolute: above a fixed activation.")
rf_kw = nc.rf_kw(sel, analysis)
value_key = f"receptive_fields_rf_value_{sel.rf_mode}"
if sel.rf_mode == "absolute":
    session.seed(value_key, float(rf_kw["value"]))
    c_value.number_input("Activation above", min_value=0.0, step=0.05, format="%.3f", key=value_key,
                         on_change=_on_value, args=(value_key,))
else:
    spec = nc.rf_slider(sel.rf_mode)
    session.seed(value_key, float(spec["default"] if sel.rf_value is None else
                           min(max(sel.rf_value, spec["min_value"]), spec["max_value"])))
    c_value.slider("q (quantile)" if sel.rf_mode == "quantile" else "fraction of the max",
                   spec["min_value"], spec["max_value"], step=spec["step"], key=value_key,
                   on_change=_on_value, args=(value_key,))
session.seed("receptive_fields_top", min(100, max(1, round(sel.top * 100))))  # the slider's bounds
c_top.slider("Vulnerability maps: top %", 1, 100, step=1, key="receptive_fields_top", on_change=_on_top,
             help="The binarized map keeps this share of the pixels with the largest values (> 0).")
stride = analysis.map_stride(sel.stride)
session.seed("receptive_fields_stride", stride)
c_stride.selectbox("Map stride", analysis.map_strides, key="receptive_fields_stride", on_change=_on_stride,
                   format_func=lambda s: "1 (exact)" if s == 1 else f"{s} (faster)")

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

for side, col in zip(SIDES, st.columns(2, gap="medium"), strict=True):
    with col:
        k = predicted[side]
        st.markdown(f"**{side.capitalize()} image** · predicted **{plain(classes[k])}** "
                    f"({probs[side][k]:.1%})")
        i1, i2, i3 = st.columns([1, 1, 1.5])
        i1.image(show(images[side], colors[k]), caption=f"pair #{pair}", width="stretch")
        i2.image(rf_overlay(images[side], masks[side]), width="stretch",
                 caption=f"neuron {j}'s RF · {masks[side].mean():.0%} of the pixels")
        with i3:
            st.plotly_chart(nc.probability_figure(probs[side], classes, colors),
                            key=f"receptive_fields_p_{side}", config={"displayModeBar": False})
        w = matched[side]
        m1, m2 = st.columns([1, 1.5])
        m1.image(heatmap(vmaps[w], mask=binary[w]), width="stretch", caption=f"{w[0]}Map, top {sel.top:.0%}")
        overlap = float(rf.iou(masks[side], binary[w]))
        m2.metric(f"IoU of the RF with {w[0]}Map", f"{overlap:.3f}")
        m2.caption(map_text[w] + ".")

# -- clusters chosen on the Clustering page --------------------------------------------------------------
if sel.clusters:
    st.subheader("Selected clusters")
    session.seed("receptive_fields_set_op", sel.set_op == "intersection")
    st.toggle("Intersection (off: union)", key="receptive_fields_set_op", on_change=_on_set_op)
    Z, refused = services.linkage(sel.experiment, pair, sel)
    nodes = [v for v in sel.clusters if Z is not None and 0 <= v < 2 * analysis.num_neurons - 1]
    if refused:
        st.warning(f"No clustering with these settings: {refused}")
    elif not nodes:
        st.info("The selected cluster ids do not belong to this pair's dendrogram; pick them again.")
    else:
        members = clustering.members(Z, nodes)
        combine = rf.intersection if sel.set_op == "intersection" else rf.union
        u1, u2, u3 = st.columns([1, 1, 2])
        for side, c in zip(SIDES, (u1, u2), strict=True):
            combined = combine(analysis.rf_masks_for(pair, side, members.tolist(), **rf_kw)).numpy()
            c.image(rf_overlay(images[side], combined), width="stretch",
                    caption=f"{sel.set_op} on the {side} image · {combined.mean():.0%} of the pixels")
        u3.markdown(f"**{sel.set_op.capitalize()}** of the RFs of **{len(members)} neurons** "
                    f"({len(nodes)} selected node{'s' if len(nodes) > 1 else ''}):")
        u3.caption(", ".join(map(str, members.tolist())))
        u3.page_link("pages/clustering.py", label="Change the clusters", icon=":material/account_tree:")

# -- context images --------------------------------------------------------------------------------------
ctx = st.expander("Context images: this neuron on the top images of the current selection",
                  key="receptive_fields_context", on_change="rerun", icon=":material/photo_library:")
if ctx.open:
    with ctx:
        s1, s2 = st.columns([2, 1])
        sort = s1.radio("Top images by", context.SORTS, horizontal=True, key="receptive_fields_context_sort",
                        format_func={"activation": "the neuron's activation",
                                     "confidence": "prediction confidence"}.get)
        m = int(s2.number_input("How many (m)", 1, 24, 6, key="receptive_fields_context_m"))
        ids = image_space.select(store.pairs, sel.cell, sel.lasso)
        scope = "all pairs" if sel.cell is None and sel.lasso is None else "the selected pairs"
        st.caption(f"Top {m} of {scope} ({len(ids)}), each with neuron {j}'s RF; adversarial: the benign "
                   "images' adversarial counterparts. Caption: pair id · score.")
        for side in SIDES:
            table, items = analysis.context_images(j, ids, m=m, sort=sort, side=side, **rf_kw)
            st.markdown(f"**{side.capitalize()}**")
            if not items:
                st.caption("No pair in the selection.")
            for start in range(0, len(items), PER_ROW):
                cols = st.columns(PER_ROW)
                rows = table.iloc[start:start + PER_ROW].iterrows()
                for c, (image, mask), (_, r) in zip(cols, items[start:start + PER_ROW], rows, strict=False):
                    c.image(rf_overlay(image, mask), width="stretch",
                            caption=f"#{int(r['pair'])} · {r['score']:.3g}")
