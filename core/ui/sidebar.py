"""The sidebar: experiment picker, an always-current summary of the selection, the next step."""
from __future__ import annotations

import streamlit as st

from core.store import StoreError
from core.ui import services, session
from core.ui.stores import cache_dir, experiments

NEXT = ":material/arrow_forward:"


def _pick_experiment() -> None:
    session.put(session.get().with_experiment(st.session_state["sidebar_experiment"]))


def render(pages: dict) -> None:
    sel = session.get()
    infos = experiments(str(cache_dir()))
    usable = [i.id for i in infos if i.manifest]
    with st.sidebar:
        broken = len(infos) - len(usable)
        if broken:
            st.caption(f"{broken} experiment(s) cannot be opened (older or damaged): see Experiments.")
        if not usable:
            st.caption("No experiment yet: prepare one.")
            return
        if sel.experiment not in usable:  # first visit, or a link to an experiment that is gone
            sel = session.put(sel.with_experiment(usable[0]))
        session.seed("sidebar_experiment", sel.experiment)  # follows changes made on other pages
        st.selectbox("Experiment", usable, key="sidebar_experiment", on_change=_pick_experiment)
        try:
            store = services.store(sel.experiment)
        except StoreError as e:
            st.error(str(e))
            return
        classes = store.classes
        st.markdown("**Selection**")
        lines = []
        if sel.cell is not None and all(0 <= c < len(classes) for c in sel.cell):  # links can be stale
            lines.append(f"Cell: {classes[sel.cell[0]]} → {classes[sel.cell[1]]}")
        if sel.lasso is not None:
            lines.append(f"Scatterplot selection: {len(sel.lasso)} pairs")
        if sel.pair is not None and 0 <= sel.pair < len(store):
            row = store.pairs.iloc[sel.pair]
            b, a = classes[int(row["label"])], classes[int(row["adv_label"])]
            lines.append(f"Pair #{sel.pair}: {b} → {a}")
        if sel.neuron is not None:
            lines.append(f"Neuron {sel.neuron}")
        if sel.clusters:
            lines.append(f"Clusters: {len(sel.clusters)} node(s), {sel.set_op}")
        st.markdown("\n".join(f"- {x}" for x in lines) if lines else "_nothing selected yet_")
        if sel.pair is None:
            st.page_link(pages["image_space"], label="Next: pick a cell and a pair", icon=NEXT)
        elif sel.neuron is None:
            st.page_link(pages["neuron_ranking"], label="Next: pick a neuron", icon=NEXT)
        else:
            st.page_link(pages["receptive_fields"], label="Next: its receptive fields", icon=NEXT)
            st.page_link(pages["clustering"], label="Or: similar neurons", icon=NEXT)
