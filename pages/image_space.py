"""Image space (paper §5.1, Fig. 2-a/b): the Data Overview (two t-SNE scatterplots and the prediction
matrix) filters the Image Grid View, where the user picks the pair to explain.

Layout only: selections go into the shared ``Selection`` from widget callbacks; charts come from
``core.ui.overview_charts``; what the page shows (subset, cell, filtered, sorted and paged pairs, the
grid's cards) from ``core.ui.views.image_space``.
A selected pair that falls outside a new cell/lasso selection stays selected (the other pages keep
working on it); the grid says that it is outside the current selection.
The matrix is an Altair chart handed to ``st.vega_lite_chart`` as its cached dict: the same widget as
``st.altair_chart``, without Altair's ~0.1 s schema validation on every rerun.
An experiment with more than ``image_space.SUBSET_ABOVE`` classes (Places365: 365) is explored in a
class subset, as in paper §6.2.2: the matrix shows its benign rows × adversarial columns, the grid its
pairs, the scatterplots colour them and grey the rest. The default is the paper's top-10 rule.
Class names are user text (folder names): Markdown gets them through ``text.plain``, HTML through
``text.html_text`` (core.ui.overview_charts), option lists as plain text.
"""
from dataclasses import replace
from functools import partial

import streamlit as st

from core import image_space
from core.store import StoreError
from core.ui import overview_charts, services, session
from core.ui.state import COLOR_BY
from core.ui.text import one_line, plain
from core.ui.views import image_space as isv

session.require_app()  # first: a deep link must not run a page outside app.py

PER_ROW = 3             # pairs per grid row (fits 1280 px with the sidebar open)
COLOR_NAMES = {"true": "true label", "predicted": "predicted label"}


# -- callbacks: every change of the selection goes through them ------------------------------------
def _on_color_by():
    session.put(replace(session.get(), color_by=st.session_state["image_space_color_by"]))


def _on_scatter(key: str):
    session.put(session.get().with_lasso(overview_charts.selected_pairs(st.session_state.get(key))))


def _on_matrix(key: str, matrix):
    sel = session.get()
    session.put(sel.with_cell(overview_charts.clicked_cell(st.session_state.get(key), sel.cell, matrix)))


def _on_classes(side: str, pairs, n_classes: int):
    """A class multiselect changed; the other side keeps its list (None keeps following the rule, so
    new benign classes bring their top adversarial labels)."""
    sel = session.get()
    picked = st.session_state[f"image_space_{side}_classes"]
    session.put(isv.with_subset(sel, pairs, n_classes, picked if side == "benign" else sel.benign_classes,
                                picked if side == "adversarial" else sel.adversarial_classes))


def _reset_classes(pairs, n_classes: int):
    session.put(isv.with_subset(session.get(), pairs, n_classes, None, None))


def _clear():
    session.put(session.get().with_cell(None).with_lasso(None))


def _on_sort():
    session.put(replace(session.get(), grid_sort=st.session_state["image_space_sort"], grid_page=0))


def _to_page(p: int):
    session.put(replace(session.get(), grid_page=max(0, int(p))))


def _pick(pair: int):
    session.put(session.get().with_pair(pair))


# -- page ------------------------------------------------------------------------------------------
sel = session.require_experiment("No experiment is chosen yet: pick one in the sidebar, or prepare one "
                                 "first.")
try:
    store = services.store(sel.experiment)
    pairs = store.pairs
except StoreError as e:
    st.error(plain(e))
    st.stop()
classes = store.classes
stamp = str(store.manifest.get("created", ""))
matrix = services.prediction_matrix(sel.experiment, stamp)
st.header("Image space")
view = isv.image_space_view(store, sel)
subset, colors, cell = view.subset, view.colors, view.cell

# -- Class subset (many classes only) ----------------------------------------------------------------
for kind, text in view.notes:
    (st.warning if kind == "warning" else st.caption)(text)
if view.many:
    pick = st.columns([2.6, 2.6, 1.2], vertical_alignment="bottom")
    names = {i: one_line(c) for i, c in enumerate(classes)}  # options are plain text
    for col, side, ids, label in ((pick[0], "benign", subset[0], "Benign (true) classes: matrix rows"),
                                  (pick[1], "adversarial", subset[1],
                                   "Adversarial classes: matrix columns")):
        session.seed(f"image_space_{side}_classes", list(ids))
        col.multiselect(label, list(range(len(classes))), format_func=names.get,
                        key=f"image_space_{side}_classes", on_change=_on_classes,
                        args=(side, pairs, len(classes)))
    pick[2].button(f"Reset to top {image_space.TOP_CLASSES}", key="image_space_reset_classes",
                   on_click=_reset_classes, args=(pairs, len(classes)),
                   disabled=sel.benign_classes is None and sel.adversarial_classes is None,
                   icon=":material/restart_alt:", help="The paper's rule for both lists", width="stretch")
for text in view.cell_warnings:
    st.warning(text)

# -- Data overview -----------------------------------------------------------------------------------
controls = st.columns([1.6, 3.2, 1], vertical_alignment="center")
st.session_state["image_space_color_by"] = sel.color_by
controls[0].radio("Colour points by", COLOR_BY, format_func=COLOR_NAMES.get, horizontal=True,
                  key="image_space_color_by", on_change=_on_color_by)
# HTML for the colour swatches; the names in it are escaped (overview_charts.legend)
controls[1].markdown(overview_charts.legend([classes[c] for c in view.key_classes],
                                            [colors[c] for c in view.key_classes]), unsafe_allow_html=True)
controls[2].button("Clear", key="image_space_clear", on_click=_clear, disabled=not view.narrowed,
                   icon=":material/filter_alt_off:", help="Clear the cell and the scatterplot selection",
                   width="stretch")

highlight = view.shown if view.narrowed else None
highlight_key = (cell, hash(sel.lasso)) if view.narrowed else None
charts = st.columns([1, 1, 1.2], gap="small")
for col, side in zip(charts[:2], ("benign", "adversarial"), strict=True):
    key = f"image_space_scatter_{side}"
    fig = services.scatter(sel.experiment, stamp, side, sel.color_by, highlight_key, highlight, subset,
                           tuple(colors))
    col.plotly_chart(fig, key=key, on_select=partial(_on_scatter, key), selection_mode=("box", "lasso"),
                     width="stretch", config={"displaylogo": False})
# A fresh key per selected cell: the chart's own click state starts empty, so clicking the selected
# cell again reaches the callback (and clears it).
matrix_key = f"image_space_matrix_{cell[0]}_{cell[1]}" if cell else "image_space_matrix"
st.html(overview_charts.MATRIX_CSS)
matrix_spec = overview_charts.with_cell(services.matrix_spec(sel.experiment, stamp, *(subset or ())), cell)
charts[2].vega_lite_chart(spec=matrix_spec, key=matrix_key, on_select=partial(_on_matrix, matrix_key, matrix),
                          selection_mode=overview_charts.MATRIX_PARAM, width="stretch")

# -- Image grid --------------------------------------------------------------------------------------
st.markdown(view.heading)
if view.outside:
    st.caption(view.outside)
bar = st.columns([2.6, 0.8, 1, 0.8], vertical_alignment="bottom")
st.session_state["image_space_sort"] = sel.grid_sort
bar[0].selectbox("Sort pairs by", list(image_space.SORTS), format_func=image_space.SORTS.get,
                 key="image_space_sort", on_change=_on_sort)
bar[1].button("Prev", key="image_space_prev", on_click=_to_page, args=(view.page_no - 1,),
              disabled=view.page_no == 0, icon=":material/chevron_left:", width="stretch")
bar[2].markdown(f"Page {view.page_no + 1} of {view.pages}")
bar[3].button("Next", key="image_space_next", on_click=_to_page, args=(view.page_no + 1,),
              disabled=view.page_no >= view.pages - 1, icon=":material/chevron_right:", width="stretch")
if view.empty:
    st.info(view.empty)
for start in range(0, len(view.cards), PER_ROW):
    for col, card in zip(st.columns(PER_ROW, gap="small"), view.cards[start:start + PER_ROW], strict=False):
        with col.container(border=True):
            for side, (bar_html, picture) in zip(st.columns(2, gap="small"), card.sides, strict=True):
                side.html(bar_html)
                side.image(picture, width="stretch")
            st.caption(card.caption)
            st.button(f"Select pair #{card.pair}", key=f"image_space_pick_{card.pair}", on_click=_pick,
                      args=(card.pair,), type="primary" if card.chosen else "secondary", width="stretch")
if sel.pair is not None:
    session.page_link("neuron_ranking", label=f"Next: the neurons of pair #{sel.pair}",
                      icon=":material/arrow_forward:")
