"""Experiments: the stores in cache/ with their manifest figures, and the ones that cannot be opened
(damaged, or of another version) with the reason; any of them can be deleted after typing its id.
Ids, class names and reasons come from folder names and files: shown as plain text (``core.ui.text``),
never as Markdown."""
import streamlit as st

from core.store import StoreError, image_classes, summary_row
from core.ui import session
from core.ui.stores import being_prepared, cache_dir, delete, experiments
from core.ui.text import one_line, plain, quoted

session.require_app()  # first: a deep link must not run a page outside app.py

DONE = "experiments_deleted"     # session key: the id just deleted (said once, above the list)
FAILED = "experiments_delete_error"


def _delete(experiment: str) -> None:
    """The confirmed delete (a callback: it runs before the sidebar, which then lists what is left)."""
    try:
        delete(experiment, cache_dir())
    except StoreError as e:
        st.session_state[FAILED] = str(e)
        return
    st.session_state[DONE] = experiment
    for key in ("experiments_delete_target", "experiments_delete_confirm", FAILED):
        st.session_state.pop(key, None)
    if session.get().experiment == experiment:  # the sidebar then opens the first one left
        session.put(session.get().with_experiment(None))


def _forget_confirmation() -> None:
    st.session_state.pop("experiments_delete_confirm", None)
    st.session_state.pop(FAILED, None)


st.title("Experiments")
if st.session_state.get(DONE):  # said once, above the list it changed
    st.success(f"Deleted {quoted(st.session_state.pop(DONE))}.")
if st.session_state.get(FAILED):
    st.error(plain(st.session_state.pop(FAILED)))
infos = experiments(str(cache_dir()))
if not infos:
    st.info("No experiments yet. Prepare one on the Prepare page, or with "
            "`python -m core prepare --preset demo` (or `make run`, which does it for you).")
    st.stop()

ok = [i for i in infos if i.manifest]  # passed the store check when listed
if ok:  # the folder name is the id the app opens (a copied store keeps its manifest's old id); "classes"
    # counts the classes whose images it holds (a class subset: fewer than the model's)
    st.dataframe([summary_row(i.manifest) | {"experiment": i.id, "classes": len(image_classes(i.manifest))}
                  for i in ok], hide_index=True, width="stretch")
for info in infos:
    if not info.manifest:
        st.warning(f"{quoted(info.id)} cannot be opened: {plain(info.error)}")
if ok:
    ids = [i.id for i in ok]
    current = session.get().experiment  # the one the sidebar shows, first
    chosen = st.selectbox("Details of", ids, index=ids.index(current) if current in ids else 0)
    manifest = next(i.manifest for i in ok if i.id == chosen)
    c = manifest["counts"]
    cols = st.columns(5)
    cols[0].metric("Images", c["n_images"])
    cols[1].metric("Clean accuracy", f"{c['clean_accuracy']:.1%}")
    cols[2].metric("Attacked", c["n_attacked"])
    cols[3].metric("Attack success", f"{c['attack_success_rate']:.1%}")
    cols[4].metric("Pairs to explore", c["n_success"])
    names, ids = manifest["classes"], image_classes(manifest)
    if len(ids) < len(names):
        st.caption(plain(f"Classes: {', '.join(names[i] for i in ids)} ({len(ids)} of the model's "
                         f"{len(names)}; an attack may turn an image into any of the {len(names)})"))
    else:
        st.caption(plain(f"Classes: {', '.join(names)}"))
    with st.expander("Manifest"):
        st.json(manifest)

with st.expander("Delete an experiment", icon=":material/delete:"):
    target = st.selectbox("Experiment to delete", [i.id for i in infos], index=None,
                          placeholder="Choose one", key="experiments_delete_target", format_func=one_line,
                          on_change=_forget_confirmation)
    if target is not None:
        cache = cache_dir()
        busy = being_prepared(target, cache)
        if busy:
            st.info(f"{quoted(target)} is being prepared now: it can be deleted once that has finished "
                    "(or been cancelled on the Prepare page).")
        st.warning(f"This deletes {quoted(target)} and everything computed for it, for every user of this "
                   "server. It cannot be undone: the experiment would have to be prepared again.")
        typed = st.text_input(f"Type {one_line(target)} to confirm", key="experiments_delete_confirm",
                              disabled=busy, help="The experiment's id, exactly as listed.")
        st.button("Delete for good", key="experiments_delete", type="primary",
                  icon=":material/delete_forever:", disabled=busy or typed.strip() != target,
                  on_click=_delete, args=(target,))
