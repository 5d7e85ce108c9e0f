"""The per-pair analytics the explore pages call: one ``Analysis`` per open experiment store.

It wires the paper's measures (each in its own module) to a store, with the choices a page needs:

- **Model.** Rebuilt from the store's manifest (architecture + checkpoint) only when a vulnerability
  map is asked for; the checkpoint's SHA-256 must match the one recorded by ``prepare``, so a map is
  never computed with weights other than those that produced the store. The head (W, b) is read from
  the same checkpoint; a store whose manifest says the head is "other" (``head_type``: not global
  average pooling into one linear layer or a 1×1 convolution) has none, and the measures that need it
  (band gap, curve difference, substitution) are left out.
- **Receptive fields** (``core.receptive_fields``) of every neuron on the pair's benign and adversarial
  image. The default quantile threshold T_j is neuron j's q-quantile over the *benign* maps of every
  pair in the store (the "dataset" of NetDissect is the clean images), and the same T_j is used on
  the adversarial image, so its RFs are measured against the neuron's normal activation level.
- **Vulnerability maps** (``core.vulnerability``) and their **IoU ranking** (``core.neuron_measures``):
  bMap is compared with the RFs on the benign image and aMap with the RFs on the adversarial image
  (``rf_side="matched"``): bMap marks where the adversarial pixels lower the benign class, which is
  about what the neurons saw in the benign image, and aMap where they raise the adversarial class,
  about what the neurons see in the adversarial one. ``rf_side`` may force "benign" or "adversarial".
- **Bands, band gap, curve difference, substitution** (``core.neuron_measures``) from the store's
  pooled vectors and class statistics: no forward pass.
- **Context images** (``core.context``): the top m pairs of a selection for one neuron, with that
  neuron's RF on each, thresholded exactly as the selected pair's RFs.
- **Clustering** (``core.clustering``) of the neurons on this pair: the distance between their
  benign+adversarial RFs, a linkage, the dendrogram geometry.

Memory cache. The most recently used results (RFs of one image: 6 MB for 512 neurons at 32×32, 308 MB
at 224×224; linkages; maps) are kept in an LRU bounded in bytes (``memory_bytes``; default
``core.concurrency.analysis_cache_bytes()``, 256 MB, env ``NVE_ANALYSIS_CACHE_MB``), so flipping between
views of the same pair recomputes nothing and no number of users grows it past its budget.

Shared by users. One ``Analysis`` serves every session of a server (``core.ui.services``). Its results
hold no per-user state, cached arrays are read-only, and vulnerability maps go through the process-wide
gate ``core.concurrency.MAP_JOBS``: at most ``NVE_MAX_MAP_JOBS`` maps are computed at once, and users
asking for the same map (same store, pair, k, stride, output, precision) share one computation.

Precomputed maps. A store prepared with ``[prepare] maps = N`` holds the maps of N pairs (paper §8),
made by ``prepare`` with the settings its manifest records (``vulnerability_maps``); they are used
whenever a page asks for those settings (any precision for "auto"), and other pairs or settings are
computed live.

Disk cache. Vulnerability maps (≈1–5 s each on a CPU) and the RF thresholds (one pass over the store's
maps) are saved under ``<store>/derived/`` (``vmap-p<pair>-k<k>-s<stride>-<output>-<precision>-v2.npy``:
(2,H,W) float32, bMap then aMap; ``rf-quantile-<q>.npy``), each written to a temporary name and
renamed, so concurrent sessions and crashes never leave a partial file. File names are built only from
validated integers and fixed choices, never from user text. If the store is read-only, results are
kept in memory instead. A file read back is trusted only if it has the expected shape and dtype and
finite values (a damaged, foreign or NaN file would give a traceback or a meaningless ranking): otherwise
it is recomputed and replaced, atomically; precomputed maps that fail the same test are computed live.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from core import clustering, concurrency, context, neuron_measures, receptive_fields, vulnerability
from core.map_settings import MapSettings
from core.store import Store, StoreError, save_npy

RF_SIDES = ("matched", "benign", "adversarial")
MAPS = ("bmap", "amap")


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or \
            (hi is not None and value >= hi):
        rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer in {rng}, got {value!r}")
    return int(value)


def _frozen(value):
    """Numpy arrays in a cached value made read-only: they are shared by every user of the server, so an
    in-place change by one page would show in everybody's views (a torch tensor cannot be frozen; code
    here never changes one in place)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, tuple | list):
        for v in value:
            _frozen(v)
    return value


def _valid(array, shape: tuple[int, ...], dtype=np.float32) -> bool:
    """Whether a cached array read back from disk can be used: an ndarray of this shape and dtype, all
    finite."""
    return (isinstance(array, np.ndarray) and array.shape == tuple(shape) and array.dtype == np.dtype(dtype)
            and bool(np.isfinite(array).all()))


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


class Analysis:
    """Per-pair analytics on one store. Thread-safe for the Streamlit server (one lock per instance
    guards the lazily built model; the memory cache has its own)."""

    def __init__(self, store: Store, device: str | torch.device = "cpu", memory_bytes: int | None = None):
        self.store = store
        self.device = torch.device(device)
        self.derived = store.path / "derived"
        self._lock = threading.RLock()
        self._model = None
        self._head = None
        self._memory = concurrency.ByteLRU(concurrency.analysis_cache_bytes() if memory_bytes is None
                                           else memory_bytes)
        pooled = store.array("benign_pooled")
        self.num_pairs, self.num_neurons = int(pooled.shape[0]), int(pooled.shape[1])
        self.image_shape = tuple(int(s) for s in store.array("benign_images").shape[1:])

    # -- model and head ---------------------------------------------------------------------------
    @property
    def model(self):
        """The store's CNN (an ``ExplainedModel``), loaded once, checked against the store."""
        with self._lock:
            if self._model is None:
                self._model = self._load_model()
            return self._model

    def _load_model(self):
        from core.config import ModelConfig
        from core.models import file_sha256, load_model
        cfg = ModelConfig(**self.store.manifest["config"]["model"])
        recorded = self.store.manifest.get("fingerprints", {}).get("model", {}).get("checkpoint_sha256")
        if cfg.checkpoint:
            path = Path(cfg.checkpoint)
            if not path.is_file():
                raise StoreError(f"experiment {self.store.id!r} was prepared with the checkpoint {path}, "
                                 "which is not there any more; put it back, or prepare the experiment "
                                 "again")
            if recorded and file_sha256(path) != recorded:
                raise StoreError(f"the checkpoint {path} has changed since experiment {self.store.id!r} "
                                 "was prepared; its maps would not explain this store. Prepare again.")
            cfg = replace(cfg, checkpoint=str(path))
        return load_model(cfg, self.image_shape).to(self.device)

    @property
    def head_type(self) -> str:
        """The model's head as ``prepare`` recorded it (``core.models.ExplainedModel.head_type``), read
        from the manifest without loading the model; "linear" for stores made before it was recorded."""
        return str(self.store.manifest.get("model", {}).get("head_type") or "linear")

    @property
    def has_head_weights(self) -> bool:
        """Whether activation×weight describes the neurons ("linear" and "conv1x1" heads): the band gap,
        curve difference and direct substitution need it (``neuron_measures.Measure.needs_weights``)."""
        return self.head_type != "other"

    @property
    def head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(W (classes, n), b (classes,)) float64 of the final dense layer (a 1×1-conv head's kernel as a
        matrix), or None for an "other" head, whose neurons have no activation×weight (the model is not
        loaded for it)."""
        if not self.has_head_weights:
            return None
        with self._lock:
            if self._head is None:
                model = self.model
                self._head = tuple(_frozen(t.detach().cpu().double().numpy())
                                   for t in (model.head_weight, model.head_bias))
            return self._head

    # -- small cache helpers ----------------------------------------------------------------------
    def _remember(self, key, value):
        return self._memory.put(key, _frozen(value))

    def _recall(self, key):
        return self._memory.get(key)

    def _load_derived(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The cached float32 array ``derived/name`` if it is one of ``shape``, all finite; else None: a
        damaged, foreign or NaN file is recomputed and replaced (``_cached``)."""
        path = self.derived / name
        if path.is_file():
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                return None
            return array if _valid(array, shape) else None
        return None

    def _save_derived(self, name: str, array: np.ndarray) -> None:
        try:
            self.derived.mkdir(exist_ok=True)
            save_npy(self.derived / name, array)
        except OSError:
            pass  # a read-only store: the in-memory copy still serves this process

    def _cached(self, name: str, compute, shape: tuple[int, ...],
                gate: concurrency.ComputeGate | None = None) -> np.ndarray:
        """From memory, else from ``derived/`` (if a valid float32 array of ``shape``), else computed
        (through ``gate``, keyed by the store and ``name``, when given), saved (when valid) and
        remembered."""
        hit = self._recall(name)
        if hit is not None:
            return hit

        def load_or_compute():
            found = self._recall(name)  # a flight that ended just before this one may have left it
            if found is None:
                found = self._load_derived(name, shape)
            if found is None:
                found = np.asarray(compute())
                if _valid(found, shape):  # never persist what would be refused when read back
                    self._save_derived(name, found)
            return self._remember(name, found)
        if gate is None:
            return load_or_compute()
        hit = self._load_derived(name, shape)  # the common case, a file read: never waits for a slot
        if hit is not None:
            return self._remember(name, hit)
        key = (str(self.store.path.resolve()), self.store.manifest.get("created"), name)
        return gate.run(key, load_or_compute)

    # -- receptive fields -------------------------------------------------------------------------
    def rf_thresholds(self, q: float = receptive_fields.DEFAULT_QUANTILE) -> np.ndarray:
        """(n,) per-neuron q-quantile of the raw benign maps over all pairs (quantile threshold)."""
        q = float(q)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must be in [0, 1], got {q}")
        return self._cached(f"rf-quantile-{q:.4f}.npy", lambda: receptive_fields.neuron_quantiles(
            self.store.array("benign_fmaps"), q, blocks=lambda: self.store.row_blocks("benign_fmaps")),
            (self.num_neurons,))

    def _pair(self, pair) -> int:
        return _int("pair", pair, 0, self.num_pairs)

    def rf(self, pair: int, side: str, *, mode: str = receptive_fields.DEFAULT_MODE,
           value: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RFs of every neuron on one image of the pair: (rf (n,C,H,W), masks (n,H,W)).

        ``mode``/``value``: the threshold (see core.receptive_fields); for "quantile", ``value`` is q
        (None: DEFAULT_QUANTILE).
        """
        masks = self.rf_masks(pair, side, mode=mode, value=value)
        image = torch.from_numpy(np.array(self.store.pair_images(int(pair))[0 if side == "benign" else 1]))
        return image.unsqueeze(0) * masks.unsqueeze(1), masks  # step 4 (built, not cached: n·C·H·W)

    def rf_masks(self, pair: int, side: str, *, mode: str = receptive_fields.DEFAULT_MODE,
                 value: float | None = None) -> torch.Tensor:
        """The RF masks (n,H,W) bool of every neuron on one image of the pair (steps 2–3 only: what the
        IoU ranking and the clustering need; 64 MB per image for 1,280 neurons at 224 px, where ``rf``'s
        masked images would be 770 MB)."""
        pair = self._pair(pair)
        _choice("side", side, ("benign", "adversarial"))
        key = ("masks", pair, side, mode, value)
        hit = self._recall(key)
        if hit is None:
            fmaps = np.asarray(self.store.array(f"{side}_fmaps")[pair], dtype=np.float32)
            hit = self._remember(key, receptive_fields.rf_masks(fmaps, self.image_shape[1:],
                                                                **self._mask_kw(mode, value)))
        return hit

    def _mask_kw(self, mode: str, value: float | None) -> dict:
        _choice("mode", mode, receptive_fields.THRESHOLD_MODES)
        if mode == "quantile":
            q = receptive_fields.DEFAULT_QUANTILE if value is None else value
            return {"mode": mode, "neuron_thresholds": self.rf_thresholds(q)}
        return {"mode": mode, "value": value}

    def rf_masks_for(self, pair: int, side: str, neurons, *, mode: str = receptive_fields.DEFAULT_MODE,
                     value: float | None = None) -> torch.Tensor:
        """Masks (len(neurons), H, W) of some neurons on one image (cheaper than all of them)."""
        pair = self._pair(pair)
        _choice("side", side, ("benign", "adversarial"))
        idx = np.asarray([_int("neuron", j, 0, self.num_neurons) for j in neurons], dtype=np.int64)
        kw = self._mask_kw(mode, value)
        if "neuron_thresholds" in kw:
            kw["neuron_thresholds"] = kw["neuron_thresholds"][idx]
        fmaps = np.asarray(self.store.array(f"{side}_fmaps")[pair][idx], dtype=np.float32)
        return receptive_fields.rf_masks(fmaps, self.image_shape[1:], **kw)

    # -- vulnerability maps -----------------------------------------------------------------------
    @property
    def map_strides(self) -> tuple[int, ...]:
        """The strides the pages offer for this store's image size (``vulnerability.stride_choices``)."""
        return vulnerability.stride_choices(*self.image_shape[1:])

    def map_settings(self, *, k: int | None = None, stride: int | None = 1, output: str = "probability",
                     precision: str = "fp32", offered: bool = False) -> MapSettings:
        """``MapSettings.resolve`` for this store's image size and device. The defaults are the exact map
        (stride 1, fp32); the app asks for the selection's k and stride (None: the defaults for the image
        size) with precision "auto" and ``offered=True``."""
        return MapSettings.resolve(self.image_shape[1:], self.device, k=k, stride=stride, output=output,
                                   precision=precision, offered=offered)

    def _settings(self, settings: MapSettings | None, map_kw: dict) -> MapSettings:
        """``settings``, or the settings the keyword arguments (k, stride, output, precision) ask for."""
        if settings is None:
            return self.map_settings(**map_kw)
        if map_kw:
            raise TypeError("give either settings or map keyword arguments, not both")
        return settings

    def vulnerability_maps(self, pair: int, settings: MapSettings | None = None, **map_kw
                           ) -> tuple[np.ndarray, np.ndarray]:
        """(bMap, aMap) (H,W) float32 of the pair (Alg. 1, core.vulnerability), cached on disk.
        ``settings`` (a ``MapSettings``) or ``map_kw`` as for ``map_settings``."""
        pair, s = self._pair(pair), self._settings(settings, map_kw)
        pre = self._precomputed(pair, s)
        if pre is not None:
            return pre[0], pre[1]
        row = self.store.pairs.iloc[pair]

        def compute():
            b, a = (torch.from_numpy(np.array(x)) for x in self.store.pair_images(pair))
            maps = vulnerability.vulnerability_maps(self.model, b, a, int(row["label"]),
                                                    int(row["adv_label"]), **s.kwargs())
            return torch.stack(maps).numpy().astype(np.float32)
        out = self._cached(s.file_name(pair), compute, (2, *self.image_shape[1:]), concurrency.MAP_JOBS)
        return out[0], out[1]

    @cached_property
    def _precomputed_maps(self) -> tuple[frozenset, tuple, str | None]:
        """(pair ids, (k, stride, output), precision) of the manifest's precomputed maps; asked on every
        rerun of the map pages, so parsed once."""
        info = self.store.manifest.get("vulnerability_maps") or {}
        return (frozenset(int(p) for p in info.get("pairs", ())),
                (info.get("k"), info.get("stride"), info.get("output")), info.get("precision"))

    def _precomputed(self, pair: int, s: MapSettings) -> np.ndarray | None:
        """The maps ``prepare`` stored for this pair (``[prepare] maps``; manifest ``vulnerability_maps``)
        when they were made with the settings ``s`` asks for (``MapSettings.serves``), if the file is there
        and sound; None otherwise (the app computes them live, into ``derived/``)."""
        pairs, made, precision = self._precomputed_maps
        if int(pair) not in pairs or not s.serves(*made, precision):
            return None
        name = vulnerability.map_file_name(pair, *made, precision)
        hit = self._recall(("precomputed", name))
        if hit is None:
            try:
                hit = np.load(self.store.path / "vulnerability_maps" / name, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                return None  # a lost or damaged file: compute live
            if not _valid(hit, (2, *self.image_shape[1:])):
                return None  # wrong shape or dtype, NaN: compute live (into derived/)
            hit = self._remember(("precomputed", name), hit)
        return hit

    def has_vulnerability_maps(self, pair: int, settings: MapSettings | None = None, **map_kw) -> bool:
        """Whether the maps are already computed (lets a page say "computing…" only when it will)."""
        pair, s = self._pair(pair), self._settings(settings, map_kw)
        if self._precomputed(pair, s) is not None:
            return True  # a precomputed file that is there and sound (one of an older version is not)
        name = s.file_name(pair)
        return (self._recall(name) is not None
                or self._load_derived(name, (2, *self.image_shape[1:])) is not None)

    def iou_ranking(self, pair: int, which: str = "bmap", *, top: float = vulnerability.DEFAULT_TOP,
                    rf_side: str = "matched", mode: str = receptive_fields.DEFAULT_MODE,
                    value: float | None = None, **map_kw) -> tuple[np.ndarray, np.ndarray]:
        """(iou (n,), neuron ids by descending IoU) between the RFs and binarized ``which`` map. When no
        pixel of the map is positive (``map_mask_status(...).empty``) every IoU is 0 and the order is
        neuron-id order: a degenerate ranking the page must say is one. ``map_kw``: ``settings=`` (a
        ``MapSettings``) or its keyword arguments, as for ``vulnerability_maps``."""
        _choice("which", which, MAPS)
        _choice("rf_side", rf_side, RF_SIDES)
        side = ("benign" if which == "bmap" else "adversarial") if rf_side == "matched" else rf_side
        vmap = self.vulnerability_maps(pair, **map_kw)[MAPS.index(which)]
        masks = self.rf_masks(pair, side, mode=mode, value=value)
        return neuron_measures.iou_ranking(masks, vulnerability.binarize(vmap, top))

    def map_mask_status(self, pair: int, which: str = "bmap", *, top: float = vulnerability.DEFAULT_TOP,
                        **map_kw) -> vulnerability.MaskInfo:
        """The pixel counts of the binarized ``which`` map that ``iou_ranking`` compares the RFs with
        (``vulnerability.binarize_info``): ``.short`` when fewer pixels than the top fraction raise the
        map above 0 (the mask is smaller than asked), ``.empty`` when none does: then every IoU is 0
        and the IoU ranking is degenerate (neuron-id order). ``map_kw`` as for ``vulnerability_maps``
        (the same cached maps, so after ``iou_ranking`` this computes nothing)."""
        _choice("which", which, MAPS)
        return vulnerability.binarize_info(self.vulnerability_maps(pair, **map_kw)[MAPS.index(which)], top)

    # -- neuron-perturbation measures (no forward pass) -------------------------------------------
    def pooled(self, pair: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self._pair(pair)
        return (np.asarray(self.store.array("benign_pooled")[pair], dtype=np.float64),
                np.asarray(self.store.array("adversarial_pooled")[pair], dtype=np.float64))

    def classes_of(self, pair: int) -> tuple[int, int]:
        row = self.store.pairs.iloc[self._pair(pair)]
        return int(row["label"]), int(row["adv_label"])

    def neuron_measures(self, pair: int, *, interval: str = neuron_measures.DEFAULT_INTERVAL,
                        coverage: float = neuron_measures.DEFAULT_COVERAGE,
                        adversarial_band: str = neuron_measures.DEFAULT_ADVERSARIAL_BAND,
                        output: str = "probability", maps: dict | None = None) -> dict[str, np.ndarray]:
        """Everything the Neuron Vulnerability View plots for one pair, per neuron (n,) float64:
        activation×weight curves, both bands and every registered measure (``neuron_measures.MEASURES``,
        ``neuron_measures.pair_measures``); for an "other" head (``head`` None) only the measures that
        need no weights (``Measure.needs_weights``). ``maps``: None computes the measures that need no
        vulnerability maps; else the keywords of ``iou_ranking`` (top, RF threshold, map settings) for
        the IoU arrays of the measures that need them too (computing the maps if they are not there)."""
        W, b = self.head or (None, None)
        bc, ac = self.classes_of(pair)
        pb, pa = self.pooled(pair)
        iou = None if maps is None else {w: self.iou_ranking(pair, w, **maps)[0] for w in MAPS}
        return neuron_measures.pair_measures(neuron_measures.pair_input(
            self.store.class_stats, W, b, pb, pa, bc, ac, interval=interval, coverage=coverage,
            adversarial_band=adversarial_band, output=output, iou=iou))

    # -- clustering -------------------------------------------------------------------------------
    def linkage(self, pair: int, *, distance: str = clustering.DEFAULT_DISTANCE,
                method: str | None = None, mode: str = receptive_fields.DEFAULT_MODE,
                value: float | None = None) -> np.ndarray:
        """The (n−1, 4) linkage of the neurons on this pair (§5.2.2): ``distance`` between their
        benign+adversarial RFs ("l2"), RF masks ("iou") or activation maps ("activation"); ``method``
        None: that distance's default (``clustering.default_method``: ward where it is Euclidean)."""
        _choice("distance", distance, clustering.DISTANCES)
        method = clustering.default_method(distance) if method is None else method
        _choice("method", method, clustering.LINKAGE_METHODS)
        pair = self._pair(pair)
        key = ("linkage", pair, distance, method, mode, value)
        hit = self._recall(key)
        if hit is not None:
            return hit
        if distance == "activation":
            maps = [np.asarray(self.store.array(f"{s}_fmaps")[pair], dtype=np.float32)
                    for s in ("benign", "adversarial")]
            dist = clustering.distance_matrix("activation", benign_fmaps=maps[0], adversarial_fmaps=maps[1])
        else:
            mb, ma = (self.rf_masks(pair, s, mode=mode, value=value) for s in ("benign", "adversarial"))
            xb, xa = self.store.pair_images(pair)  # the RFs' images (their own size: step 1 is a no-op)
            dist = clustering.distance_matrix(distance, benign_image=xb, adversarial_image=xa,
                                              benign_masks=mb, adversarial_masks=ma)
        return self._remember(key, clustering.linkage(dist, method, kind=distance))

    # -- context images ---------------------------------------------------------------------------
    def context_images(self, neuron: int, pairs=None, *, m: int = 6, sort: str = "activation",
                       side: str = "benign", ranked_by: str | None = None,
                       mode: str = receptive_fields.DEFAULT_MODE, value: float | None = None):
        """(table, [(image (C,H,W), RF mask (H,W))]) of the top ``m`` pairs of ``pairs`` (None: all)
        for ``neuron``, ranked on ``ranked_by``'s images (None: ``side``; core.context.READINGS), each
        with the neuron's RF on its ``side`` image (threshold ``mode``/``value``, as ``rf_masks_for``)."""
        neuron = _int("neuron", neuron, 0, self.num_neurons)
        table = context.top_images(self.store, neuron, pairs, m=m, sort=sort, side=side, ranked_by=ranked_by)
        kw = self._mask_kw(mode, value)
        if "neuron_thresholds" in kw:
            kw["neuron_thresholds"] = kw["neuron_thresholds"][[neuron]]

        def rf_fn(fmap, image):
            return receptive_fields.rf_masks(fmap[None], image.shape[1:], **kw)[0].numpy()
        return table, context.context_receptive_fields(self.store, neuron, table["pair"].to_numpy(),
                                                        side=side, rf_fn=rf_fn)
