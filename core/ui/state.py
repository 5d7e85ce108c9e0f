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
- another pair clears the selected clusters (each pair has its own tree, on which they were picked);
- neuron ids are the same for every pair of an experiment, so the neuron survives pair changes;
- selected clusters are sets of neuron ids, never dendrogram node numbers: another linkage, distance or
  RF threshold (another tree) keeps the same neurons selected, and the Clustering page says which sets
  are no longer one cluster of the current tree (``core.clustering.cluster_node``);
- climbing (§6.1.4 "two levels up"): the climbed cluster is the last selected set that holds the
  selected neuron (``climbed``); ``climb_up`` replaces it by the smallest cluster of the current tree
  that strictly contains it (the first press, with no such set, adds the neuron's parent),
  ``climb_down`` by the next cluster down the neuron's path (from the parent: back to the neuron alone,
  the set removed), ``climb_reset`` removes it. The state is (neuron, clusters), so it is in the link;
- choosing the 1 − IoU distance while a Euclidean-only linkage (ward, centroid, median) is selected
  switches the linkage to ``core.clustering.default_method("iou")`` (``with_distance``); a link that
  asks for the combination anyway gets the page's refusal.
"""
from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from core import clustering, neuron_measures, receptive_fields
from core.image_space import DEFAULT_SORT, SORTS

KEY = "nve_selection"
NEURON_SORTS = {m.key: m.label for m in neuron_measures.MEASURES}  # sort key -> menu label
SET_OPS = ("union", "intersection")
COLOR_BY = ("true", "predicted")
# Bounds of what a link may ask for; anything outside is ignored (the default is kept). Ids (pairs,
# neurons, classes, dendrogram nodes) are indices into int32-sized arrays; the pages check them against
# the store. The other bounds are the widgets' (a value a widget refuses would stop the page).
MAX_ID = 2**31 - 1
MAX_LASSO_IN_URL = 500  # longer selections are not put in the link (URLs get too long to share)


def _choice(default: str, options):
    """A field whose link value must be one of ``options``."""
    return field(default=default, metadata={"choices": tuple(options)})


def _bounded(default, lo, hi):
    """A number whose link value must lie in [lo, hi]."""
    return field(default=default, metadata={"bounds": (lo, hi)})


def _ids(most: int, default=None, in_link: int | None = None):
    """A list of ids (or of sets of ids) of at most ``most`` entries in a link; a list longer than
    ``in_link`` is left out of the links this app writes."""
    meta = {"most": most} if in_link is None else {"most": most, "in_link": in_link}
    return field(default=default, metadata=meta)


@dataclass
class Selection:
    """Everything a link can hold. The URL codec (``to_query``/``from_query``) is derived from these
    fields: the type decides the encoding (int, float, str, tuple of ids, the cell pair, the clusters),
    the metadata the bounds (``_bounded``), the options (``_choice``) and the list lengths (``_ids``)."""
    experiment: str | None = field(default=None, metadata={"param": "exp"})
    cell: tuple[int, int] | None = None         # (true label, adversarial label)
    # pair ids chosen with a box/lasso on a scatterplot
    lasso: tuple[int, ...] | None = _ids(100_000, in_link=MAX_LASSO_IN_URL)
    color_by: str = _choice("true", COLOR_BY)
    # The class subset of an experiment with many classes (paper §6.2.2); None: the paper's top-10 rule
    # (core.image_space.class_subset), so a link stays short and follows the store.
    benign_classes: tuple[int, ...] | None = _ids(10_000)
    adversarial_classes: tuple[int, ...] | None = _ids(10_000)
    grid_sort: str = _choice(DEFAULT_SORT, SORTS)
    grid_page: int = _bounded(0, 0, 10**6)
    pair: int | None = _bounded(None, 0, MAX_ID)
    neuron: int | None = _bounded(None, 0, MAX_ID)
    neuron_sort: str = _choice(neuron_measures.MEASURES[0].key, NEURON_SORTS)
    zoom: int = _bounded(0, 0, MAX_ID)          # show the top N neurons of the sort (0: all)
    # selected neuron sets (each sorted), in click order
    clusters: tuple[tuple[int, ...], ...] = _ids(1000, ())
    set_op: str = _choice("union", SET_OPS)
    n_clusters: int = _bounded(8, 1, 1000)      # colouring of the dendrogram
    rf_mode: str = _choice(receptive_fields.DEFAULT_MODE, receptive_fields.THRESHOLD_MODES)
    rf_value: float | None = _bounded(None, 0.0, 1e6)  # q for quantile, fraction, or absolute value
    top: float = _bounded(0.2, 0.01, 1.0)       # binarization of the vulnerability maps
    # vulnerability maps: the stride of the patch positions and the patch half-size k; None: the default
    # for the experiment's image size (``core.map_settings``)
    stride: int | None = _bounded(None, 1, 64)
    k: int | None = _bounded(None, 1, 64)
    interval: str = _choice(neuron_measures.DEFAULT_INTERVAL, neuron_measures.INTERVALS)
    coverage: float = _bounded(neuron_measures.DEFAULT_COVERAGE, 1e-6, 1.0)
    distance: str = _choice(clustering.DEFAULT_DISTANCE, clustering.DISTANCES)
    method: str = _choice(clustering.DEFAULT_METHOD, clustering.LINKAGE_METHODS)

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

    def with_distance(self, distance: str) -> Selection:
        """Another clustering distance; a linkage the distance cannot use is replaced by its default."""
        method = self.method
        if distance == "iou" and method in clustering.EUCLIDEAN_ONLY:
            method = clustering.default_method(distance)
        return replace(self, distance=distance, method=method)

    def toggle_cluster(self, neurons) -> Selection:
        """Select the set ``neurons`` (a clicked node's subtree), or deselect it if it is selected."""
        s = neuron_set(neurons)
        if not s:
            return self
        sets = tuple(c for c in self.clusters if c != s) if s in self.clusters else (*self.clusters, s)
        return replace(self, clusters=sets)

    # -- climbing the tree from the selected neuron (§6.1.4 bottom-up) ------------------------------
    def climbed(self) -> int | None:
        """Index in ``clusters`` of the climbed cluster: the last selected set holding the neuron."""
        if self.neuron is None:
            return None
        return next((i for i in range(len(self.clusters) - 1, -1, -1) if self.neuron in self.clusters[i]),
                    None)

    def _replace_climbed(self, i: int, new: tuple[int, ...] | None) -> Selection:
        rest = [c for k, c in enumerate(self.clusters) if k != i]
        if new is None or new in rest:  # removed, or already selected elsewhere: no duplicate
            return replace(self, clusters=tuple(rest))
        return replace(self, clusters=(*self.clusters[:i], new, *self.clusters[i + 1:]))

    def climb_up(self, Z) -> Selection:
        """One level up from the selected neuron (see the module doc); unchanged at the root or without
        a neuron in the tree of linkage ``Z``."""
        n = len(Z) + 1
        if self.neuron is None or not 0 <= self.neuron < n:
            return self
        i = self.climbed()
        if i is None:
            parent = clustering.nodes_containing(Z, self.neuron)[0]
            return replace(self, clusters=(*self.clusters, neuron_set(clustering.subtree(Z, parent))))
        current = self.clusters[i]
        if current[-1] >= n:  # not neurons of this experiment: nothing to climb from
            return self
        node = clustering.common_ancestor(Z, current)
        if len(clustering.subtree(Z, node)) == len(current):  # a cluster of this tree: its parent
            node = int(clustering.parents(Z)[node])
            if node < 0:
                return self  # the root: all neurons
        return self._replace_climbed(i, neuron_set(clustering.subtree(Z, node)))

    def climb_down(self, Z) -> Selection:
        """One level down, towards the selected neuron: the largest cluster of the neuron's path strictly
        inside the climbed set; from the neuron's parent, the set is removed (back to the neuron)."""
        n = len(Z) + 1
        i = self.climbed()
        if i is None or not 0 <= self.neuron < n or self.clusters[i][-1] >= n:
            return self
        inside = set(self.clusters[i])
        below = None
        for node in clustering.nodes_containing(Z, self.neuron):  # bottom-up
            members = clustering.subtree(Z, node)
            if len(members) >= len(inside) or not inside.issuperset(members.tolist()):
                break
            below = members
        return self._replace_climbed(i, None if below is None else neuron_set(below))

    def climb_reset(self) -> Selection:
        """Remove the climbed cluster (back to the neuron alone)."""
        i = self.climbed()
        return self if i is None else self._replace_climbed(i, None)

    def climb_level(self, Z) -> int | None:
        """How many levels above the neuron the climbed cluster is (1: its parent), or None when there is
        none or it is not one cluster of the tree of ``Z`` on the neuron's path."""
        i = self.climbed()
        if i is None or self.clusters[i][-1] >= len(Z) + 1:
            return None
        node = clustering.cluster_node(Z, self.clusters[i])
        path = clustering.nodes_containing(Z, self.neuron)
        return path.index(node) + 1 if node in path else None


def neuron_set(neurons) -> tuple[int, ...]:
    """A selected cluster's canonical form: its neuron ids, sorted, without repeats."""
    return tuple(sorted({int(j) for j in neurons}))


def encode_set(neurons) -> str:
    """A neuron set for a link: sorted ids joined by ".", runs of 3 or more written "first-last"
    ("3-7.12"); the clusters of a selection are then joined by ","."""
    ids, parts, k = neuron_set(neurons), [], 0
    while k < len(ids):
        end = k
        while end + 1 < len(ids) and ids[end + 1] == ids[end] + 1:
            end += 1
        if end - k >= 2:
            parts.append(f"{ids[k]}-{ids[end]}")
        else:
            parts += [str(v) for v in ids[k:end + 1]]
        k = end + 1
    return ".".join(parts)


def decode_set(text: str, budget: int) -> tuple[int, ...]:
    """The inverse of ``encode_set``; ValueError for any malformed part, an id outside 0..MAX_ID, a
    reversed range or more than ``budget`` ids in all (counted before a range is expanded)."""
    ids: list[int] = []
    for part in text.split("."):
        lo, sep, hi = part.partition("-")
        a = _id(lo)
        b = _id(hi) if sep else a
        if b < a or len(ids) + (b - a + 1) > budget:
            raise ValueError(f"bad or too long range {part!r}")
        ids.extend(range(a, b + 1))
    return neuron_set(ids)


# -- URL query string -------------------------------------------------------------------------------
# Everything below is derived from the ``Selection`` fields: their types pick the codec, their metadata
# the bounds, options and lengths (see the class).
RF_RELATIVE_MAX = 1.0      # quantile q and fraction of the max lie in [0, 1]
MAX_CLUSTER_NEURONS = 100_000  # neuron ids in all the selected clusters of a link (ranges expanded)
MAX_VALUE_CHARS = 1_000_000  # a longer value is not even parsed
MAX_EXPERIMENT_CHARS = 64    # store ids are at most 64 characters (core.store); longer ones are cut
_DEFAULT = Selection()
_TYPES = typing.get_type_hints(Selection)
INT_RANGES = {f.name: f.metadata["bounds"] for f in fields(Selection) if _TYPES[f.name] in (int, int | None)}
FLOAT_RANGES = {f.name: f.metadata["bounds"] for f in fields(Selection)
                if _TYPES[f.name] in (float, float | None)}
CHOICES = {f.name: f.metadata["choices"] for f in fields(Selection) if "choices" in f.metadata}
MAX_LIST = {f.name: f.metadata["most"] for f in fields(Selection) if "most" in f.metadata}


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


def _experiment(text: str, key: str) -> str:
    if not text.strip():
        raise ValueError("no experiment")
    # a longer id cannot be a store's: cut, and the sidebar says it is not here
    return text if len(text) <= MAX_EXPERIMENT_CHARS else text[:MAX_EXPERIMENT_CHARS] + "…"


def _short(v: float) -> str:
    """A float in a link: ``%g`` when it reads back exactly (short), else every digit (``repr``)."""
    text = f"{v:g}"
    return text if float(text) == v else repr(v)


def _float(text: str, key: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{key}={v} is not finite")
    return _in_range(v, key, FLOAT_RANGES)


def _option(text: str, key: str) -> str:
    if text not in CHOICES[key]:
        raise ValueError(f"{key}={text!r} is not an option")
    return text


def _cell(text: str, key: str) -> tuple[int, int]:
    a, b = text.split("-")
    return _id(a), _id(b)


class _Codec(typing.NamedTuple):
    """How one type of field travels in a link: ``encode(value) -> str`` and ``decode(text, field
    name)``, which raises ValueError (or TypeError) for a value to ignore."""
    encode: typing.Callable
    decode: typing.Callable


# by the field's type; "" is a list the user emptied (ids are checked against the store by the pages)
_CODECS = {
    str | None: _Codec(str, _experiment),
    str: _Codec(str, _option),
    int: _Codec(str, lambda t, key: _in_range(int(t), key, INT_RANGES)),
    float: _Codec(_short, _float),
    tuple[int, int] | None: _Codec(lambda v: f"{v[0]}-{v[1]}", _cell),
    tuple[int, ...] | None: _Codec(lambda v: ",".join(map(str, v)),
                                   lambda t, key: tuple(sorted(set(_id_list(t, key))))),
    tuple[tuple[int, ...], ...]: _Codec(lambda v: ",".join(encode_set(c) for c in v),
                                        lambda t, key: _clusters(t)),
}
_CODECS[int | None], _CODECS[float | None] = _CODECS[int], _CODECS[float]
# query parameter -> (field, codec); a field's parameter is its name unless its metadata names another
PARAMS = {f.metadata.get("param", f.name): (f, _CODECS[_TYPES[f.name]]) for f in fields(Selection)}
_UNCHECKED = [f.name for f in fields(Selection) if _TYPES[f.name] is str and f.name not in CHOICES]
if _UNCHECKED:  # a link naming it would fail in _option: a new text field needs its options (_choice)
    raise TypeError(f"Selection fields {_UNCHECKED} are text without options; declare them with _choice")


def to_query(sel: Selection) -> dict[str, str]:
    """The non-default fields as short strings (lists comma-separated)."""
    out: dict[str, str] = {}
    for param, (f, codec) in PARAMS.items():
        v = getattr(sel, f.name)
        if v == getattr(_DEFAULT, f.name):
            continue
        if "in_link" in f.metadata and len(v) > f.metadata["in_link"]:
            continue  # too long to share
        out[param] = codec.encode(v)
    if sel.distance == "iou" and sel.method in clustering.EUCLIDEAN_ONLY:
        out["method"] = sel.method  # the default linkage would decode as the IoU's own (from_query)
    return out


def from_query(query: Mapping) -> Selection:
    """A Selection from a query string; a malformed, unknown or out-of-range value is ignored (default
    kept), so a hand-edited, stale or hostile link never breaks the app. Ids are checked by the pages
    against the store."""
    sel = Selection()
    values: dict = {}
    for key, raw in query.items():
        if key not in PARAMS:
            continue
        f, codec = PARAMS[key]
        try:
            text = str(_first(raw))
            if len(text) <= MAX_VALUE_CHARS:
                values[f.name] = codec.decode(text, f.name)
        except (ValueError, TypeError):
            continue
    # a quantile or a fraction of the max lies in [0, 1]; the absolute mode takes any value >= 0
    mode = values.get("rf_mode", sel.rf_mode)
    if mode != "absolute" and values.get("rf_value", 0.0) > RF_RELATIVE_MAX:
        del values["rf_value"]
    # a link with the IoU distance and no linkage: the IoU's default, not a refused Euclidean one
    if values.get("distance") == "iou" and "method" not in values and sel.method in clustering.EUCLIDEAN_ONLY:
        values["method"] = clustering.default_method("iou")
    return replace(sel, **values)


def _clusters(text: str) -> tuple[tuple[int, ...], ...]:
    """Comma-separated ``encode_set`` sets, unique, in click order; any bad set (or too many sets or
    ids) makes the whole list ignored. An old link's node numbers read as one-neuron sets: a leaf's
    number is its neuron id, and an internal node's number (>= n) is no neuron of the experiment, which
    the Clustering page names and ignores."""
    parts = [x for x in text.split(",") if x.strip() != ""]
    if len(parts) > MAX_LIST["clusters"]:
        raise ValueError(f"more than {MAX_LIST['clusters']} clusters")
    sets: list[tuple[int, ...]] = []
    budget = MAX_CLUSTER_NEURONS
    for part in parts:
        s = decode_set(part, budget)
        budget -= len(s)
        sets.append(s)
    return tuple(dict.fromkeys(sets))
