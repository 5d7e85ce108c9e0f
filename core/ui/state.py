"""The one selection model every page reads and writes, and its URL encoding.

Streamlit drops a widget's state when the user changes page, so the selection lives in our own
session-state key (``KEY``) as a ``Selection``; widgets copy into it from their callbacks. The pure
functions here (no Streamlit import) map chart events and query strings to selections, so unit tests
can call them directly.

Coupling rules (what a change clears), so no view ever shows a stale combination:
- another experiment clears everything else;
- a new class subset (many-class experiments, paper §6.2.2) resets the grid page; the page clears a
  cell outside it;
- a new cell or lasso set resets the grid page and keeps the pair only if it is still in the selection
  (the page decides, since it knows the pairs);
- another pair clears the selected clusters (dendrogram node ids belong to one pair's tree);
- neuron ids are the same for every pair of an experiment, so the neuron survives pair changes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace

from core import clustering, neuron_measures, receptive_fields
from core.image_space import DEFAULT_SORT, SORTS

KEY = "nve_selection"
NEURON_SORTS = {"band_gap": "band gap (neuron perturbation)", "curve_difference": "curve difference",
                "iou_bmap": "IoU with bMap (image perturbation)",
                "iou_amap": "IoU with aMap (image perturbation)",
                "benign_decrease": "direct substitution: benign probability drop",
                "adversarial_increase": "direct substitution: adversarial probability rise"}
SET_OPS = ("union", "intersection")
COLOR_BY = ("true", "predicted")


@dataclass
class Selection:
    experiment: str | None = None
    cell: tuple[int, int] | None = None         # (true label, adversarial label)
    lasso: tuple[int, ...] | None = None        # pair ids chosen with a box/lasso on a scatterplot
    color_by: str = "true"
    # The class subset of an experiment with many classes (paper §6.2.2); None: the paper's top-10 rule
    # (core.image_space.class_subset), so a link stays short and follows the store.
    benign_classes: tuple[int, ...] | None = None
    adversarial_classes: tuple[int, ...] | None = None
    grid_sort: str = DEFAULT_SORT
    grid_page: int = 0
    pair: int | None = None
    neuron: int | None = None
    neuron_sort: str = "band_gap"
    zoom: int = 0                               # show the top N neurons of the sort (0: all)
    clusters: tuple[int, ...] = ()              # dendrogram node ids (leaves are neuron ids)
    set_op: str = "union"
    n_clusters: int = 8                         # colouring of the dendrogram
    rf_mode: str = receptive_fields.DEFAULT_MODE
    rf_value: float | None = None               # q for quantile, fraction, or absolute value
    top: float = 0.2                            # binarization of the vulnerability maps
    stride: int = 2
    interval: str = neuron_measures.DEFAULT_INTERVAL
    coverage: float = neuron_measures.DEFAULT_COVERAGE
    distance: str = clustering.DEFAULT_DISTANCE
    method: str = clustering.DEFAULT_METHOD
    extra: dict = field(default_factory=dict, compare=False)  # page-local odds and ends (not in URL)

    # -- transitions ------------------------------------------------------------------------------
    def with_experiment(self, experiment: str | None) -> Selection:
        if experiment == self.experiment:
            return self
        return Selection(experiment=experiment)

    def with_cell(self, cell: tuple[int, int] | None) -> Selection:
        return replace(self, cell=None if cell is None else (int(cell[0]), int(cell[1])), grid_page=0)

    def with_classes(self, benign, adversarial) -> Selection:
        """Another class subset (None: the top-10 rule for that side); back to the first grid page."""
        def ids(v):
            return None if v is None else tuple(sorted({int(i) for i in v}))
        return replace(self, benign_classes=ids(benign), adversarial_classes=ids(adversarial), grid_page=0)

    def with_lasso(self, ids) -> Selection:
        return replace(self, lasso=None if ids is None else tuple(sorted({int(i) for i in ids})),
                       grid_page=0)

    def with_pair(self, pair: int | None) -> Selection:
        if pair == self.pair:
            return self
        return replace(self, pair=None if pair is None else int(pair), clusters=())

    def with_neuron(self, neuron: int | None) -> Selection:
        return replace(self, neuron=None if neuron is None else int(neuron))

    def toggle_cluster(self, node: int) -> Selection:
        node = int(node)
        nodes = tuple(n for n in self.clusters if n != node) if node in self.clusters else \
            (*self.clusters, node)
        return replace(self, clusters=nodes)


# -- URL query string -------------------------------------------------------------------------------
_INTS = ("grid_page", "pair", "neuron", "zoom", "n_clusters", "stride")
_FLOATS = ("rf_value", "top", "coverage")
_CHOICES = {"color_by": COLOR_BY, "grid_sort": tuple(SORTS), "neuron_sort": tuple(NEURON_SORTS),
            "set_op": SET_OPS, "rf_mode": receptive_fields.THRESHOLD_MODES,
            "interval": neuron_measures.INTERVALS, "distance": clustering.DISTANCES,
            "method": clustering.LINKAGE_METHODS}
_LISTS = ("clusters", "benign_classes", "adversarial_classes")
_DEFAULT = Selection()
MAX_LASSO_IN_URL = 500  # longer selections are not put in the link (URLs get too long to share)
# Bounds of what a link may ask for; anything outside is ignored (the default is kept). Ids (pairs,
# neurons, classes, dendrogram nodes) are indices into int32-sized arrays; the pages check them against
# the store. The other bounds are the widgets' (a value a widget refuses would stop the page).
MAX_ID = 2**31 - 1
INT_RANGES = {"grid_page": (0, 10**6), "pair": (0, MAX_ID), "neuron": (0, MAX_ID), "zoom": (0, MAX_ID),
              "n_clusters": (1, 1000), "stride": (1, 64)}
FLOAT_RANGES = {"top": (0.01, 1.0), "coverage": (1e-6, 1.0), "rf_value": (0.0, 1e6)}
RF_RELATIVE_MAX = 1.0      # quantile q and fraction of the max lie in [0, 1]
MAX_LIST = {"lasso": 100_000, "clusters": 1000, "benign_classes": 10_000, "adversarial_classes": 10_000}
MAX_VALUE_CHARS = 1_000_000  # a longer value is not even parsed
MAX_EXPERIMENT_CHARS = 64    # store ids are at most 64 characters (core.store); longer ones are cut


def to_query(sel: Selection) -> dict[str, str]:
    """The non-default fields as short strings (lists comma-separated)."""
    out: dict[str, str] = {}
    for f in fields(Selection):
        v = getattr(sel, f.name)
        if f.name == "extra" or v == getattr(_DEFAULT, f.name):
            continue
        if f.name == "experiment":
            out["exp"] = v
        elif f.name == "cell":
            out["cell"] = f"{v[0]}-{v[1]}"
        elif f.name == "lasso":
            if len(v) <= MAX_LASSO_IN_URL:
                out["lasso"] = ",".join(map(str, v))
        elif f.name in _LISTS:
            out[f.name] = ",".join(map(str, v))
        else:
            out[f.name] = f"{v:g}" if isinstance(v, float) else str(v)
    return out


def _first(v):
    """The value of a parameter given several times: the last (Streamlit's ``to_dict`` does the same)."""
    if isinstance(v, list | tuple):
        if not v:
            raise ValueError("no value")
        return v[-1]
    return v


def _id(text: str) -> int:
    v = int(text)
    if not 0 <= v <= MAX_ID:
        raise ValueError(f"id {v} out of range")
    return v


def _id_list(text: str, key: str) -> tuple[int, ...]:
    """Comma-separated ids; any bad one (or too many) makes the whole list ignored."""
    parts = [x for x in text.split(",") if x.strip() != ""]
    if len(parts) > MAX_LIST[key]:
        raise ValueError(f"more than {MAX_LIST[key]} ids")
    return tuple(_id(x) for x in parts)


def _in_range(v, key: str, ranges: dict):
    lo, hi = ranges[key]
    if not lo <= v <= hi:
        raise ValueError(f"{key}={v} outside [{lo}, {hi}]")
    return v


def from_query(query: Mapping) -> Selection:
    """A Selection from a query string; a malformed, unknown or out-of-range value is ignored (default
    kept), so a hand-edited, stale or hostile link never breaks the app. Ids are checked by the pages
    against the store."""
    sel = Selection()
    values: dict = {}
    for key, raw in query.items():
        try:
            text = str(_first(raw))
            if len(text) > MAX_VALUE_CHARS:
                continue
            if key == "exp":
                if text.strip():
                    values["experiment"] = text if len(text) <= MAX_EXPERIMENT_CHARS else \
                        text[:MAX_EXPERIMENT_CHARS] + "…"  # cannot be an id; the sidebar says it is not here
            elif key == "cell":
                a, b = text.split("-")
                values["cell"] = (_id(a), _id(b))
            elif key == "lasso":
                values["lasso"] = tuple(sorted(set(_id_list(text, key))))
            elif key == "clusters":
                values["clusters"] = tuple(dict.fromkeys(_id_list(text, key)))  # unique, in click order
            elif key in ("benign_classes", "adversarial_classes"):
                # "" is a list the user emptied; the page checks ids against the store's classes
                values[key] = tuple(sorted(set(_id_list(text, key))))
            elif key in _INTS:
                values[key] = _in_range(int(text), key, INT_RANGES)
            elif key in _FLOATS:
                v = float(text)
                if math.isfinite(v):
                    values[key] = _in_range(v, key, FLOAT_RANGES)
            elif key in _CHOICES and text in _CHOICES[key]:
                values[key] = text
        except (ValueError, TypeError):
            continue
    # a quantile or a fraction of the max lies in [0, 1]; the absolute mode takes any value >= 0
    mode = values.get("rf_mode", sel.rf_mode)
    if mode != "absolute" and values.get("rf_value", 0.0) > RF_RELATIVE_MAX:
        del values["rf_value"]
    return replace(sel, **values)


def as_dict(sel: Selection) -> dict:
    d = asdict(sel)
    d.pop("extra")
    return d
