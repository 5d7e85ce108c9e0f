"""Receptive fields: the Receptive Field View (paper §5.2–5.3, Fig. 2-d, Fig. 5). The selected neuron's RF on
the benign and on the adversarial image beside each image's class probabilities, the two vulnerability
maps (bMap, aMap) binarized at a top-% and their IoU with the RFs, the RF threshold, the context images
of the current selection, and the union/intersection of the RFs of the clusters picked on Clustering.
Layout only: what it shows comes from ``core.ui.views.receptive_fields`` (class names already through
``text.plain`` there; the charts escape them in their builders)."""
from contextlib import nullcontext

import streamlit as st

from core import context
from core import receptive_fields as rf
from core.ui import neuron_charts as nc
from core.ui import session, views
from core.ui.text import number
from core.ui.views import receptive_fields as rv

session.require_app()  # first: a deep link must not run a page outside app.py

SPINNER = "Computing the vulnerability maps (first time for this pair)…"
PER_ROW = 6


def _on_mode(analysis) -> None:
    mode = st.session_state["receptive_fields_rf_mode"]
    session.update(rf_mode=mode, rf_value=nc.rf_value(mode, None, lambda: rv.absolute_default(analysis)))


def _on_value(key: str) -> None:
    value = st.session_state[key]
    if value is not None:
        session.update(rf_value=float(value))


sel = session.require_experiment()
st.header("Receptive fields")
analysis = session.require_analysis(sel)
session.require_pair(analysis, sel)
session.require_neuron(analysis, sel)
view = rv.rf_view(analysis, sel)
st.markdown(view.title)

# -- controls --------------------------------------------------------------------------------------------
c_mode, c_value, c_top, c_stride = st.columns([1.5, 1.3, 1.3, 0.9])
session.seed("receptive_fields_rf_mode", sel.rf_mode)
c_mode.radio("RF threshold", rf.THRESHOLD_MODES, format_func=rv.MODE_LABELS.get, horizontal=True,
             key="receptive_fields_rf_mode", on_change=_on_mode, args=(analysis,), help=rv.HELP["mode"])
value_key = f"receptive_fields_rf_value_{sel.rf_mode}"
if sel.rf_mode == "absolute":
    session.seed(value_key, float(view.rf_kw["value"]))
    c_value.number_input("Activation above", min_value=0.0, step=0.05, format="%.3f", key=value_key,
                         on_change=_on_value, args=(value_key,), help=rv.HELP["absolute"])
else:
    spec = nc.rf_slider(sel.rf_mode)
    session.seed(value_key, float(spec["default"] if sel.rf_value is None else
                           min(max(sel.rf_value, spec["min_value"]), spec["max_value"])))
    c_value.slider("q (quantile)" if sel.rf_mode == "quantile" else "fraction of the max",
                   spec["min_value"], spec["max_value"], step=spec["step"], key=value_key,
                   on_change=_on_value, args=(value_key,), help=rv.HELP[sel.rf_mode])
session.seed("receptive_fields_top", min(100, max(1, round(sel.top * 100))))  # the slider's bounds
c_top.slider("Vulnerability maps: top %", 1, 100, step=1, key="receptive_fields_top", help=rv.HELP["top"],
             on_change=lambda: session.update(top=st.session_state["receptive_fields_top"] / 100))
session.seed("receptive_fields_stride", view.stride)
c_stride.selectbox("Map stride", view.strides, key="receptive_fields_stride", help=rv.HELP["stride"],
                   on_change=lambda: session.update(stride=int(st.session_state["receptive_fields_stride"])),
                   format_func=lambda s: "1 (exact)" if s == 1 else f"{s} (faster)")

# -- the pair: images, RFs, probabilities, maps ----------------------------------------------------------
with st.spinner(SPINNER) if not views.maps_ready(analysis, sel) else nullcontext():
    shown = rv.pair_view(analysis, sel)
for side, col in zip(rv.SIDES, st.columns(2, gap="medium"), strict=True):
    v = shown.sides[side]
    with col:
        st.markdown(v.title, help=rv.HELP["rf"])
        i1, i2, i3 = st.columns([1, 1, 1.5])
        i1.image(v.picture, caption=f"pair #{view.pair}", width="stretch")
        i2.image(v.rf_picture, width="stretch", caption=v.rf_caption)
        with i3:
            st.plotly_chart(v.probabilities, key=f"receptive_fields_p_{side}",
                            config={"displayModeBar": False})
        m1, m2 = st.columns([1, 1.5])
        m1.image(v.map_picture, width="stretch", caption=v.map_caption)
        m2.metric(f"IoU of the RF with {v.map_name[0]}Map", number(v.iou, ".3f"), help=rv.HELP["iou"])
        m2.caption(v.map_text, help=rv.HELP[v.map_name])
        if v.short:
            m2.caption(v.short, help=rv.HELP["top"])

# -- clusters chosen on the Clustering page --------------------------------------------------------------
if shown.clusters is not None:
    st.subheader("Selected clusters")
    session.seed("receptive_fields_set_op", sel.set_op == "intersection")
    st.toggle("Intersection (off: union)", key="receptive_fields_set_op", on_change=lambda: session.update(
        set_op="intersection" if st.session_state["receptive_fields_set_op"] else "union"))
    valid, members = shown.clusters.valid, shown.clusters.members.tolist()
    if not valid:
        st.info("The selected clusters name no neuron of this experiment; pick them again on Clustering.")
    else:
        u1, u2, u3 = st.columns([1, 1, 2])
        for (picture, caption), c in zip(shown.cluster_pictures.values(), (u1, u2), strict=True):
            c.image(picture, width="stretch", caption=caption)
        u3.markdown(f"**{sel.set_op.capitalize()}** of the RFs of **{len(members)} neurons** "
                    f"({len(valid)} selected cluster{'s' if len(valid) > 1 else ''}):")
        u3.caption(", ".join(map(str, members)))
        with u3:
            session.page_link("clustering", label="Change the clusters")

# -- context images --------------------------------------------------------------------------------------
ctx = st.expander("Context images: this neuron on the top images of the current selection",
                  key="receptive_fields_context", on_change="rerun", icon=":material/photo_library:")
if ctx.open:
    with ctx:
        s1, s2, s3 = st.columns([1.6, 1.6, 0.8])
        sort = s1.radio("Top images by", context.SORTS, horizontal=True, key="receptive_fields_context_sort",
                        format_func=rv.SORT_LABELS.get, help=rv.HELP["sort"])
        reading = s2.radio("Adversarial row", tuple(context.READINGS), horizontal=True,
                           key="receptive_fields_context_reading", format_func=rv.READING_LABELS.get,
                           help=rv.HELP["reading"])
        m = int(s3.number_input("How many (m)", 1, 24, 6, key="receptive_fields_context_m",
                                help="How many top images each row lists."))
        rows = rv.context_view(analysis, sel, sort, reading, m)
        st.caption(rows.caption, help=rv.HELP["context"])
        for side, items in rows.rows.items():
            st.markdown(f"**{side.capitalize()}**")
            if not items:
                st.caption("No pair in the selection.")
            for start in range(0, len(items), PER_ROW):
                for c, (picture, caption) in zip(st.columns(PER_ROW), items[start:start + PER_ROW],
                                                 strict=False):
                    c.image(picture, width="stretch", caption=caption)
