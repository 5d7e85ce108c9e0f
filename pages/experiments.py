"""Experiments: the stores in cache/ with their manifest figures, and the ones that cannot be opened
(damaged, or of another version) with the reason. Ids, class names and reasons come from folder names
and files: shown as plain text (``core.ui.text``), never as Markdown."""
import streamlit as st

from core.store import summary_row
from core.ui import session
from core.ui.stores import cache_dir, experiments
from core.ui.text import plain, quoted

session.require_app()  # first: a deep link must not run a page outside app.py

st.title("Experiments")
infos = experiments(str(cache_dir()))
if not infos:
    st.info("No experiments yet. Prepare one on the Prepare page, or with "
            "`python -m core prepare --preset demo` (or `make run`, which does it for you).")
    st.stop()

ok = [i for i in infos if i.manifest]  # passed the store check when listed
if ok:  # the folder name is the id the app opens (a copied store keeps its manifest's old id)
    st.dataframe([summary_row(i.manifest) | {"experiment": i.id} for i in ok], hide_index=True,
                 use_container_width=True)
for info in infos:
    if not info.manifest:
        st.warning(f"{quoted(info.id)} cannot be opened: {plain(info.error)}")
if ok:
    chosen = st.selectbox("Details of", [i.id for i in ok])
    manifest = next(i.manifest for i in ok if i.id == chosen)
    c = manifest["counts"]
    cols = st.columns(5)
    cols[0].metric("Images", c["n_images"])
    cols[1].metric("Clean accuracy", f"{c['clean_accuracy']:.1%}")
    cols[2].metric("Attacked", c["n_attacked"])
    cols[3].metric("Attack success", f"{c['attack_success_rate']:.1%}")
    cols[4].metric("Pairs to explore", c["n_success"])
    st.caption(plain(f"Classes: {', '.join(manifest['classes'])}"))
    with st.expander("Manifest"):
        st.json(manifest)
