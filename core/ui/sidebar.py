"""The sidebar: experiment picker, an always-current summary of the selection, the next step.

Class names and experiment ids are user text (a link can carry any id): shown through ``text.plain``.
A link to an experiment that is not here (or cannot be opened) opens the first one and says why above
the page. The "Next" links carry the selection in their query string (``session.page_link``); the
navigation menu's links cannot (Streamlit builds their address from the page's path alone), so each
page writes the selection to the address as it opens (``session.sync_url``)."""
from __future__ import annotations

import streamlit as st

from core.store import StoreError, validate_id
from core.ui import services, session
from core.ui.stores import cache_dir, experiments
from core.ui.text import plain, quoted

NEXT = ":material/arrow_forward:"
MISSING = "nve_missing_experiment"  # session key: (id a link asked for, id shown instead or None, selection)


def _pick_experiment() -> None:
    session.put(session.get().with_experiment(st.session_state["sidebar_experiment"]))


def _replace_missing(sel, infos) -> object:
    """A selection whose experiment is here: a link's unknown, invalid or damaged experiment is replaced
    by the first usable one (or none), and remembered with the reason so the page can say so."""
    usable = [i.id for i in infos if i.manifest]
    if sel.experiment is None or sel.experiment in usable:
        return sel
    asked = sel.experiment
    try:
        validate_id(asked)
        why = next((f"cannot be opened: {i.error}" for i in infos if i.id == asked), "is not here")
    except StoreError as e:
        why = f"cannot be opened: {e}"
    sel = session.put(sel.with_experiment(usable[0] if usable else None))
    st.session_state[MISSING] = (asked, why, sel.experiment, sel)
    return sel


def _say_missing(sel) -> None:
    """Say what became of the experiment the link asked for (above the page), until the user changes
    the selection."""
    missing = st.session_state.get(MISSING)
    if not missing:
        return
    asked, why, instead, landed = missing
    if sel != landed:  # the user has moved on
        del st.session_state[MISSING]
        return
    say = st.warning if why == "is not here" else st.error
    then = (f"showing {quoted(instead)}. Pick another one in the sidebar." if instead is not None
            else "there is no experiment to show yet: prepare one.")
    say(f"Experiment {quoted(asked)} {plain(why)}; {then}")


def render() -> None:
    sel = session.get()
    infos = experiments(str(cache_dir()))
    usable = [i.id for i in infos if i.manifest]
    sel = _replace_missing(sel, infos)
    _say_missing(sel)
    with st.sidebar:
        broken = len(infos) - len(usable)
        if broken:
            st.caption(f"{broken} experiment(s) cannot be opened (older or damaged): see Experiments.")
        if not usable:
            st.caption("No experiment yet: prepare one.")
            return
        if sel.experiment is None:  # first visit
            sel = session.put(sel.with_experiment(usable[0]))
        session.seed("sidebar_experiment", sel.experiment)  # follows changes made on other pages
        st.selectbox("Experiment", usable, key="sidebar_experiment", on_change=_pick_experiment)
        try:
            store = services.store(sel.experiment)
        except StoreError as e:
            st.error(plain(e))
            return
        classes = [plain(c) for c in store.classes]  # shown in Markdown below
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
            neurons = len({j for c in sel.clusters for j in c})
            lines.append(f"Clusters: {len(sel.clusters)} set(s), {neurons} neurons, {sel.set_op}")
        st.markdown("\n".join(f"- {x}" for x in lines) if lines else "_nothing selected yet_")
        # the links carry the selection: "open in a new tab" opens the same case
        if sel.pair is None:
            session.page_link("image_space", label="Next: pick a cell and a pair", icon=NEXT)
        elif sel.neuron is None:
            session.page_link("neuron_ranking", label="Next: pick a neuron", icon=NEXT)
        else:
            session.page_link("receptive_fields", label="Next: its receptive fields", icon=NEXT)
            session.page_link("clustering", label="Or: similar neurons", icon=NEXT)
