"""Prepare an experiment: a form for non-programmers (a preset, or a dataset folder and a model: a built-in
architecture or a timm name with its checkpoint, or a model file that carries its architecture; the
normalization; the class subset; the attack), which shows what it found in the model before the run, runs
``core.pipeline.prepare`` in the background with visible progress (core.jobs), then offers the new
experiment."""
from pathlib import Path

import streamlit as st

from core import attacks, jobs, model_cards
from core import data as datasets
from core.attacks import ATTACKS, PARAMS
from core.config import ConfigError
from core.hosting import settings
from core.models import ModelError
from core.presets import PRESETS
from core.store import Store, StoreError, validate_id
from core.ui import pages, prepare_form, session
from core.ui.stores import cache_dir, experiments
from core.ui.text import one_line, plain  # every message may hold user or file text (paths, names)

session.require_app()  # first: a deep link must not run a page outside app.py

CUSTOM, CKPT_MODES, SOURCE_LABELS = prepare_form.CUSTOM, prepare_form.CKPT_MODES, prepare_form.SOURCE_LABELS
DEFAULT_PRESET = "demo"
FIELDS = ("prepare_preset", "prepare_source", "prepare_root", "prepare_image_size", "prepare_classes",
          "prepare_per_class", "prepare_arch", "prepare_timm", "prepare_ckpt_mode", "prepare_ckpt_path",
          "prepare_channels",
          "prepare_width", "prepare_mean", "prepare_std", *prepare_form.attack_fields(), "prepare_batch_size",
          "prepare_maps", "prepare_perplexity", "prepare_device", "prepare_id")
limits = settings()
SAVED = "prepare_saved"  # the form's values, kept while the user visits other pages
JOB = "prepare_job"      # the experiment id this session started


def _on_preset() -> None:
    st.session_state.update(prepare_form.preset_values(st.session_state["prepare_preset"], cache_dir()))


def _on_method() -> None:
    s = st.session_state
    s.update(prepare_form.method_values(s["prepare_method"], s))


def _on_arch() -> None:
    found = prepare_form.default_normalization(st.session_state["prepare_arch"])
    mean, std = found or ((), ())  # a timm name or a model file: from its card or defaults (empty fields)
    st.session_state["prepare_mean"], st.session_state["prepare_std"] = (prepare_form.numbers(mean),
                                                                         prepare_form.numbers(std))


def _set_normalization(mean, std) -> None:
    st.session_state["prepare_mean"], st.session_state["prepare_std"] = (prepare_form.numbers(mean),
                                                                         prepare_form.numbers(std))


def _on_card() -> None:
    """The uploaded model with the uploaded card (a pair of its own), or the model alone again."""
    s = st.session_state
    s.pop("prepare_card_error", None)
    f, model = s.get("prepare_card"), s.get("prepare_upload_model")
    if not model:
        if f is not None:
            s["prepare_card_error"] = "upload the model first, then its card"
        return
    s["prepare_upload_path"] = model
    if f is None:
        return
    try:
        s["prepare_upload_path"] = str(prepare_form.save_card(f.getvalue(), f.name, model))
    except jobs.USER_ERRORS as e:
        s["prepare_card_error"] = str(e)


def _on_upload() -> None:
    for key in ("prepare_upload_path", "prepare_upload_model", "prepare_upload_error"):
        st.session_state.pop(key, None)
    f = st.session_state.get("prepare_upload")
    if f is None:
        return
    try:
        st.session_state["prepare_upload_model"] = str(prepare_form.save_upload(
            f.getvalue(), f.name, cache_dir(), max_bytes=int(st.get_option("server.maxUploadSize")) * 2**20))
    except jobs.USER_ERRORS as e:
        st.session_state["prepare_upload_error"] = str(e)
        return
    _on_card()  # a card already chosen goes with the new model


def _explore(experiment: str) -> None:
    experiments.clear()
    session.put(session.get().with_experiment(experiment))
    st.session_state["sidebar_experiment"] = experiment  # the sidebar's picker shows it at once
    st.session_state["prepare_go"] = True


@st.fragment(run_every=1)
def _live(experiment: str, cache: str) -> None:
    """Progress of a running job, refreshed every second without rerunning the rest of the app."""
    job = jobs.get(experiment, cache)
    if job is None or job.finished:
        experiments.clear()
        st.rerun()
    # not a `with` block: leaving one marks the box complete (✓) while the job is still running
    box = st.status(f"{'Cancelling' if job.cancelled else 'Preparing'} {plain(experiment)}…", expanded=True,
                    state="running")
    box.progress(job.fraction, text=plain(job.describe()))
    box.caption(f"{job.elapsed():.0f} s so far. It runs on the server: you can explore other "
                "experiments meanwhile, or come back to this page to see how far it got.")
    box.button("Cancel", key="prepare_cancel", icon=":material/stop:", on_click=jobs.cancel, args=(job,),
               disabled=job.cancelled, help="Stops the job; what it finished is kept, so preparing the "
               "same id with the same settings later resumes where it stopped.")


def _job_panel(experiment: str, cache: Path) -> None:
    """The job's box: running (⟳, live), done (✓) or failed/cancelled (!), never ✓ before it is done."""
    job = jobs.get(experiment, cache)
    if job is None:
        st.session_state.pop(JOB, None)
        return
    if job.running:
        _live(experiment, str(cache))
        return
    if job.ok:
        box = st.status(f"{plain(experiment)} is ready ({job.elapsed():.0f} s)", expanded=True,
                        state="complete")
        counts = Store(job.path).counts
        skipped = (f" {counts['n_skipped']:,} unreadable file(s) were skipped (see Messages)."
                   if counts.get("n_skipped") else "")
        box.success(f"{plain(experiment)} is ready: {counts['n_success']:,} successful attacks out of "
                    f"{counts['n_attacked']:,} correctly classified images ({counts['n_images']:,} images, "
                    f"clean accuracy {counts['clean_accuracy']:.1%})." + skipped)
        box.button("Explore it", key="prepare_explore", type="primary", on_click=_explore, args=(experiment,),
                   icon=":material/arrow_forward:")
    elif job.cancelled:
        box = st.status(f"Preparing {plain(experiment)} was cancelled", expanded=True, state="error")
        box.info(f"Preparing {plain(experiment)} was {plain(job.error)}.")
    else:
        box = st.status(f"Preparing {plain(experiment)} failed", expanded=True, state="error")
        box.error(f"Preparing {plain(experiment)} failed: {plain(job.error)}")
        box.caption("Nothing half-written was published. Fix the problem and press Prepare again with the "
                    "same experiment id: an interrupted run resumes where it stopped.")
    box.button("Dismiss", key="prepare_dismiss", on_click=lambda: st.session_state.pop(JOB, None))
    if job.log:  # beside the box: an expander cannot be nested in the status box (itself one)
        with st.expander("Messages"):
            st.text("\n".join(list(job.log)[-50:]))


def _form_config():
    classes = prepare_form.dataset_classes(source, st.session_state.get("prepare_root"), cache)
    return prepare_form.build_config(None if st.session_state["prepare_preset"] == CUSTOM
                                     else st.session_state["prepare_preset"],
                                     prepare_form.config_values(st.session_state, len(classes)))


def _model_found(classes: list[str]) -> str | None:
    """What the model check found, shown as plain text before the run; the problem that stops it, or None.
    Only once a model is given (a path the server lets the app read, or a finished upload)."""
    s = st.session_state
    upload = s["prepare_ckpt_mode"] == CKPT_MODES[1]
    path = s.get("prepare_upload_path") if upload else s.get("prepare_ckpt_path", "").strip()
    if not path or not classes:
        return None
    try:
        if not upload and not prepare_form.server_path(path, cache, "checkpoint file", ModelError).is_file():
            return None  # said above
        cfg = _form_config()
        prepare_form.check_server_paths(cfg, cache)
        with st.spinner("Reading the model…"):
            found = prepare_form.check_model(cfg)
    except (ModelError, ConfigError, datasets.DataError) as e:
        st.error(plain(str(e)))
        return str(e)
    box = st.container(border=True, key="prepare_found")
    box.caption("Found in the model:")
    box.text("\n".join(prepare_form.summary_lines(found)))
    if (warning := prepare_form.class_names_problem(found, classes)) is not None:
        st.warning(plain(warning))
    return None


# -- page -----------------------------------------------------------------------------------------------
if st.session_state.pop("prepare_go", False):
    st.switch_page(pages.path("image_space"))

cache = cache_dir()
st.header("Prepare an experiment")
st.caption("An experiment attacks your model on your images and records what its neurons do, so the "
           "Explore pages can explain the attacks. Start from a preset, or give your own images and model. "
           "It runs in the background on the server; progress shows here.")

if st.session_state.get(JOB):
    _job_panel(st.session_state[JOB], cache)
others = [j for j in jobs.running(cache) if j.experiment != st.session_state.get(JOB)]
if others:
    st.caption("Also being prepared on this server: " + ", ".join(
        f"{plain(j.experiment)} ({j.describe().lower()})" for j in others))

# the form's values survive a visit to another page (Streamlit drops the state of unrendered widgets)
for key, value in st.session_state.get(SAVED, {}).items():
    if key not in st.session_state:
        st.session_state[key] = value
if "prepare_preset" not in st.session_state:
    st.session_state["prepare_preset"] = DEFAULT_PRESET
    _on_preset()


def _preset_label(name: str) -> str:
    if name == CUSTOM:
        return "My own images and model"
    cfg = PRESETS[name]
    return f"{name}: {cfg.model.arch} on {SOURCE_LABELS.get(cfg.data.source, cfg.data.source)}"


st.selectbox("Start from", [CUSTOM, *PRESETS], key="prepare_preset", format_func=_preset_label,
             on_change=_on_preset, help="A preset fills in every field below; change any of them.")

left, right = st.columns(2, gap="large")
classes_all: list[str] = []
with left:
    st.markdown("#### 1. Images")
    st.selectbox("Data source", list(datasets.SOURCES), key="prepare_source", format_func=SOURCE_LABELS.get,
                 help="Where the images come from: the small Fashion-MNIST sample that comes with the app, "
                 "a standard dataset in a folder on the server, or your own images in one folder per class.")
    source = st.session_state["prepare_source"]
    if source != "demo":
        st.text_input("Dataset folder (on the server)", key="prepare_root",
                      placeholder="/data/my-images", help="A folder with one sub-folder of images per class, "
                      "e.g. /data/pets/cats/001.jpg and /data/pets/dogs/001.jpg.")
    if source != "demo" and not st.session_state.get("prepare_root", "").strip():
        st.info("Enter the folder that holds your images, one sub-folder per class.")
    else:
        try:
            classes_all = prepare_form.dataset_classes(source, st.session_state.get("prepare_root"), cache)
        except datasets.DataError as e:
            st.error(plain(str(e)))
    if classes_all:
        st.session_state["prepare_classes"] = [c for c in st.session_state.get("prepare_classes", [])
                                               if c in classes_all]
        st.multiselect(f"Classes ({len(classes_all)} found; none chosen = all)", classes_all,
                       key="prepare_classes", placeholder="All classes", format_func=one_line,
                       help="Attack only the images of these classes (fewer classes: a faster run and a "
                       "smaller prediction matrix). The model still chooses among all its classes, so an "
                       "attack can turn an image into a class that is not chosen here.")
    c1, c2 = st.columns(2)
    c1.number_input("Images per class (0 = all)", min_value=0, max_value=limits.max_per_class, step=10,
                    key="prepare_per_class", help="How many images of each class to take (the first ones "
                    "of each class). Fewer images: a faster run; more: more attacks to explore.")
    c2.number_input("Resize to (pixels, 0 = keep)", min_value=0, max_value=limits.max_image_size, step=32,
                    key="prepare_image_size",
                    help="Needed when your images differ in size; 224 for ImageNet-style models.")

    st.markdown("#### 2. Model")
    st.selectbox("Architecture", prepare_form.ARCH_CHOICES, key="prepare_arch", on_change=_on_arch,
                 format_func=lambda a: {prepare_form.TIMM: "A timm model, by name",
                                        prepare_form.FROM_FILE: "Carried by the model file (.pt2, .onnx)"
                                        }.get(a, a),
                 help="The network your checkpoint was trained as. The *_cifar ones take 32×32 images. A "
                 "model exported with torch.export (.pt2) or to ONNX (.onnx) carries its own architecture.")
    if st.session_state["prepare_arch"] == prepare_form.TIMM:
        st.text_input("timm model name", key="prepare_timm", placeholder=prepare_form.TIMM_EXAMPLES[0],
                      help="timm:<name>, as timm.list_models() lists it, e.g. "
                      + ", ".join(prepare_form.TIMM_EXAMPLES) + ". The checkpoint holds its trained weights.")
        try:
            prepare_form.timm_arch(st.session_state["prepare_timm"])
        except ModelError as e:
            st.error(plain(str(e)))
    st.radio("Checkpoint (the trained weights)", CKPT_MODES, key="prepare_ckpt_mode", horizontal=True,
             help="The file that holds what your model learned. Give the path of a file already on the "
             "server, or upload one from your computer.")
    if st.session_state["prepare_ckpt_mode"] == CKPT_MODES[0]:
        st.text_input("Checkpoint or model file (on the server)", key="prepare_ckpt_path",
                      placeholder="/models/my-model.pth", help="The full path of the weights file on the "
                      "server, e.g. /models/my-model.pth (.pth, .pt, .th, .tar or .safetensors), or of a "
                      "model file (.pt2, .onnx). A card <name>.json beside it may give its normalization, "
                      "input size and classes.")
        path = st.session_state["prepare_ckpt_path"].strip()
        try:  # nothing is looked up outside the folders the server lets the app read
            if path and not prepare_form.server_path(path, cache, "checkpoint file", ModelError).is_file():
                st.error(plain(f"the checkpoint file {path!r} does not exist on the server"))
        except ModelError as e:
            st.error(plain(str(e)))
    else:
        st.file_uploader("Upload the checkpoint or model file", key="prepare_upload", on_change=_on_upload,
                         type=sorted({s.rsplit(".", 1)[-1] for s in prepare_form.MODEL_SUFFIXES}),
                         help="Only plain weights are read (never code): a state dict or .safetensors, or a "
                              "model file (.pt2, .onnx) read without running code from it. It is kept on "
                              "the server under the cache folder.")
        if st.session_state.get("prepare_upload_error"):
            st.error(plain(st.session_state["prepare_upload_error"]))
        elif st.session_state.get("prepare_upload_path"):
            st.caption("Checkpoint received and readable.")
            st.file_uploader("Its card (optional .json)", key="prepare_card", on_change=_on_card,
                             type=["json"],
                             help="A small JSON object with num_classes, mean, std, input_size, in_channels "
                             "and class_names, all optional; kept beside the uploaded model.")
            if st.session_state.get("prepare_card_error"):
                st.error(plain(st.session_state["prepare_card_error"]))
    if note := prepare_form.own_file_note(st.session_state):
        st.caption(plain(note))
    st.caption("Normalization (what the model's training did to the pixels):")
    norm_buttons = st.columns(len(prepare_form.NORMALIZATIONS) + 1)
    for column, (label, (mean, std)) in zip(norm_buttons, prepare_form.NORMALIZATIONS.items(), strict=False):
        column.button(label, key=f"prepare_norm_{label}", on_click=_set_normalization, args=(mean, std),
                      help=f"mean {prepare_form.numbers(mean)}, std {prepare_form.numbers(std)}")
    norm_buttons[-1].button("From the model", key="prepare_norm_model", on_click=_set_normalization,
                            args=((), ()), help="Empty fields: the model's card or architecture says (none "
                            "when neither does); what was found shows under the model.")
    with st.expander("Model details"):
        st.radio("Input channels", prepare_form.CHANNEL_CHOICES, key="prepare_channels", horizontal=True,
                 format_func=lambda c: {0: "from the model", 3: "3 (colour)"}.get(c, "1 (grayscale)"),
                 help="Whether the model was trained on colour (red, green, blue) or grayscale images; "
                 "the images are converted to match. 'From the model': its card or first convolution "
                 "says (3 when neither does).")
        st.number_input("Width (resnet18_cifar only; 64 = 512 neurons)", min_value=8, max_value=512, step=8,
                        key="prepare_width", help="How wide the network was built when trained: the "
                        "number of filters of its first layer. It must match the checkpoint; other "
                        "architectures ignore it.")
        st.text_input("Normalization mean", key="prepare_mean",
                      help="The average pixel value the model's training subtracted from every image (pixels "
                      "from 0 to 1): one number, or one per colour channel separated by commas. Use the "
                      "values the model was trained with; the architecture fills in its usual ones. Both "
                      "fields empty: from the model's card or architecture.")
        st.text_input("Normalization std", key="prepare_std",
                      help="The spread the model's training divided every image by after subtracting the "
                      "mean: one number, or one per colour channel separated by commas.")
    model_problem = _model_found(classes_all)

with right:
    st.markdown("#### 3. Attack")
    st.radio("Method", tuple(ATTACKS), key="prepare_method", horizontal=True, on_change=_on_method,
             format_func=lambda m: ATTACKS[m].label, help=prepare_form.METHOD_HELP)
    method = st.session_state["prepare_method"]
    used = ATTACKS[method].params  # the others are shown, disabled
    numbers = [attacks.param(method, p.name) for p in PARAMS.values() if p.kind is not bool]
    for row in range(0, len(numbers), 3):
        for column, p in zip(st.columns(3), numbers[row:row + 3], strict=False):
            low, high = prepare_form.attack_widget_range(p)
            column.number_input(p.label, min_value=low, max_value=high, step=p.step,
                                key=prepare_form.attack_key(p.name), disabled=p.name not in used, help=p.help)
    for p in (attacks.param(method, p.name) for p in PARAMS.values() if p.kind is bool):
        st.checkbox(p.label, key=prepare_form.attack_key(p.name), disabled=p.name not in used, help=p.help)
    st.caption(f"ε = {st.session_state['prepare_eps']:g}/255 = {st.session_state['prepare_eps'] / 255:.4f} "
               "in [0, 1] pixel units.")

    st.markdown("#### 4. Run")
    st.text_input("Experiment id", key="prepare_id", max_chars=64,
                  help="Its name in the experiment list: letters, digits, '.', '_' or '-'.")
    ident = st.session_state["prepare_id"].strip()
    try:
        validate_id(ident)
        if (cache / ident).exists():
            st.error(plain(f"an experiment named {ident!r} already exists; choose another id"))
        elif (cache / f".partial-{ident}").exists():
            st.info(plain(f"An interrupted prepare of {ident!r} was found: with the same settings it "
                          "resumes where it stopped."))
    except StoreError as e:
        st.error(plain(str(e)))
    with st.expander("Run details"):
        st.number_input("Batch size (0 = chosen for the device and image size)", min_value=0,
                        max_value=4096, step=16, key="prepare_batch_size",
                        help="How many images are processed at once. Larger is faster until memory runs "
                        "out; lower it if a run stops for lack of memory.")
        st.number_input("Precompute the vulnerability maps of this many pairs", min_value=0,
                        max_value=limits.max_images, step=10,
                        key="prepare_maps", help="Those of the most populated prediction-matrix cells "
                        "first (paper §8). They open at once in the app; other pairs are computed when "
                        "first opened (seconds each at 32 px, more at 224 px).")
        st.number_input("t-SNE perplexity", min_value=2.0, max_value=500.0, step=5.0,
                        key="prepare_perplexity", help="How many neighbours each image's point tries to stay "
                        "close to in the Image space scatterplots: small values show small tight groups, "
                        "large values the overall layout. 30 suits a few thousand images; it must be below "
                        "the number of attacked images.")
        st.selectbox("Device", ("auto", "cpu", "cuda"), key="prepare_device",
                     help="Where the computation runs: cuda is an NVIDIA graphics card (much faster), cpu "
                     "the processor; auto takes the graphics card when the server has one.")
    busy = jobs.get(ident, cache) if ident else None
    start = st.button("Prepare", key="prepare_start", type="primary", icon=":material/play_arrow:",
                      disabled=(busy is not None and busy.running) or model_problem is not None)
    if model_problem is not None:
        st.caption("Fix the model's problem above to prepare.")
    if busy is not None and busy.running:
        st.caption(plain(f"{ident!r} is being prepared now."))

st.session_state[SAVED] = {k: st.session_state[k] for k in FIELDS if k in st.session_state}

if start:
    try:
        ident = validate_id(ident)
        if (cache / ident).exists():
            raise StoreError(f"an experiment named {ident!r} already exists; choose another id")
        cfg = _form_config()
        prepare_form.check_server_paths(cfg, cache)
        jobs.check_capacity()  # before loading the checkpoint: a busy server says so at once
        with st.spinner("Checking the checkpoint…"):
            prepare_form.check_model(cfg)
        cfg.model = model_cards.resolve(cfg.model)  # the job runs what the check found (card, file)
        jobs.start(cfg, ident, cache)
    except jobs.USER_ERRORS as e:
        with right:
            st.error(plain(str(e)))
    else:
        st.session_state[JOB] = ident
        st.rerun()
