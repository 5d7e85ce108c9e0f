"""The Data Overview and the Image Grid View (paper §5.1, Fig. 2-a/b) as data: ``image_space_view``
gives the class subset in use (paper §6.2.2, or the classes a store was prepared on), the class colours,
the valid cell, the pairs of the current selection (cell, lasso, subset), sorted and paged, and one card
per pair of the grid page. Texts are final (class names through ``text.plain``; the probability bars are
HTML from ``overview_charts.probability_bar``, which escapes them)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import image_space
from core.store import image_classes
from core.ui import overview_charts
from core.ui.images import show
from core.ui.palette import class_colors
from core.ui.text import plain

PER_PAGE = 12           # pairs per grid page
IMAGE_SIZE = 128        # 32 px images at 4x, nearest-neighbour


@dataclass(frozen=True)
class PairCard:
    pair: int
    chosen: bool                     # the selected pair
    sides: list[tuple[str, str]]     # benign, adversarial: (probability bar HTML, picture)
    caption: str


@dataclass(frozen=True)
class ImageSpaceView:
    many: bool                       # more classes than colours: the class-subset pickers are shown
    subset: tuple | None             # (benign ids, adversarial ids) as tuples, or None: every class
    notes: list[tuple[str, str]]     # about the class subset: ("warning" or "caption", text), in order
    colors: list[str]                # per class
    key_classes: list[int]           # the classes of the colour key
    cell: tuple[int, int] | None     # the selected cell, when valid here
    cell_warnings: list[str]         # why the selected cell is ignored
    narrowed: bool                   # a cell or a lasso narrows the pairs
    shown: np.ndarray                # the pair ids of the selection
    heading: str                     # Markdown above the grid
    outside: str | None              # the selected pair is outside the selection
    page_no: int
    pages: int
    empty: str | None                # why the grid is empty
    cards: list[PairCard]            # the grid page


def _subset(store, sel):
    """(many, subset, notes, colors, key_classes)."""
    pairs, classes = store.pairs, store.classes
    prepared_on = image_classes(store.manifest)  # the classes whose images it holds ([data] classes)
    if len(classes) > image_space.SUBSET_ABOVE:
        benign_ids, adv_ids, ignored = image_space.resolve_subset(pairs, len(classes), sel.benign_classes,
                                                                  sel.adversarial_classes)
        subset = (tuple(benign_ids.tolist()), tuple(adv_ids.tolist()))
        notes = []
        if ignored:  # a stale or hand-edited link
            notes.append(("warning", f"Class ids {', '.join(map(str, ignored))} do not exist in this "
                                     "experiment: ignored."))
        top = image_space.TOP_CLASSES
        notes.append(("caption", f"{len(classes)} classes are too many to tell apart by colour or to show in "
                                 "the prediction matrix, so the views show a class subset (paper §6.2.2). By "
                                 f"default: the {top} true classes with the most successful attacks, and the "
                                 f"{top} adversarial labels most frequent among their pairs."))
        return (True, subset, notes, overview_charts.subset_colors(len(classes), subset[0] + subset[1]),
                sorted(set(subset[0] + subset[1])))
    if len(prepared_on) < len(classes):  # prepared on a class subset: its classes, the labels it reached
        subset = overview_charts.prepared_subset(pairs, prepared_on)
        note = (f"This experiment holds the images of {len(prepared_on)} of the model's {len(classes)} "
                "classes: the matrix rows are those classes, its columns those and the adversarial labels "
                "their attacks reached.")
        return (False, subset, [("caption", note)], class_colors(len(classes)),
                sorted(set(subset[0] + subset[1])))
    return False, None, [], class_colors(len(classes)), list(range(len(classes)))


def with_subset(sel, pairs, n_classes: int, benign, adversarial):
    """``sel`` with another class subset (``Selection.with_classes``; None: the top-10 rule for that
    side); a selected cell outside the new subset is cleared."""
    sel = sel.with_classes(benign, adversarial)
    rows, cols, _ = image_space.resolve_subset(pairs, n_classes, sel.benign_classes, sel.adversarial_classes)
    return sel if image_space.cell_in_subset(sel.cell, rows, cols) else sel.with_cell(None)


def _card(store, pair: int, sel, colors) -> PairCard:
    classes, r = store.classes, store.pairs.iloc[pair]
    b_lab, a_lab = int(r["label"]), int(r["adv_label"])
    sides = [(overview_charts.probability_bar(prob, colors[lab], classes[lab]),
              show(img, colors[lab], size=IMAGE_SIZE, uri=True))
             for img, lab, prob in zip(store.pair_images(pair), (b_lab, a_lab),
                                       (r["benign_prob"], r["adv_prob"]), strict=True)]
    chosen = pair == sel.pair
    caption = (("✓ selected · " if chosen else "")
               + f"#{pair} · L2 {r['l2']:.3f} · {plain(classes[b_lab])} {r['benign_prob']:.1%} → "
               f"{plain(classes[a_lab])} {r['adv_prob']:.1%}")
    return PairCard(pair, chosen, sides, caption)


def image_space_view(store, sel) -> ImageSpaceView:
    """Everything the Image space page draws for ``sel`` but the cached charts (``overview_charts``)."""
    pairs, classes = store.pairs, store.classes
    many, subset, notes, colors, key_classes = _subset(store, sel)
    cell, cell_notes = sel.cell, []
    if cell is not None and not all(0 <= c < len(classes) for c in cell):  # a stale or hand-edited link
        cell_notes.append(f"Cell {cell} does not exist in this experiment: it is ignored.")
        cell = None
    if subset is not None and not image_space.cell_in_subset(cell, *subset):
        cell_notes.append(f"Cell {plain(classes[cell[0]])} → {plain(classes[cell[1]])} is outside the class "
                          "subset: it is ignored.")
        cell = None
    narrowed = cell is not None or sel.lasso is not None
    shown = image_space.select(pairs, cell, sel.lasso, *(subset or (None, None)))

    what = []
    if cell is not None:
        what.append(f"cell {plain(classes[cell[0]])} → {plain(classes[cell[1]])}")
    if sel.lasso is not None:
        what.append(f"{len(sel.lasso)} points lassoed")
    if narrowed:
        heading = f"**{len(shown)} pair{'' if len(shown) == 1 else 's'} selected** ({' and '.join(what)})"
    elif subset is not None and len(shown) < len(pairs):
        heading = (f"**All {len(shown)} pairs of the class subset** ({len(pairs)} in all) — select a cell "
                   "or lasso points to narrow down.")
    else:
        heading = f"**All {len(shown)} pairs** — select a cell or lasso points to narrow down."
    outside = None
    if sel.pair is not None and 0 <= sel.pair < len(pairs) and sel.pair not in set(shown.tolist()):
        outside = f"Pair #{sel.pair} stays selected but is outside the current selection."

    ordered = image_space.sort_pairs(pairs, shown, sel.grid_sort)
    page_ids, page_no, pages = image_space.page(ordered, sel.grid_page, PER_PAGE)
    empty = None
    if not len(shown) and (subset is None or len(classes) <= image_space.SUBSET_ABOVE):
        empty = "No pair is in both the cell and the scatterplot selection: clear one of them."
    elif not len(shown) and not (subset[0] and subset[1]):
        empty = "The class subset is empty: choose benign and adversarial classes, or reset it."
    elif not len(shown):
        empty = ("No pair of the class subset is in the current selection: clear the selection or widen "
                 "the subset.")
    return ImageSpaceView(
        many=many, subset=subset, notes=notes, cell_warnings=cell_notes, colors=colors,
        key_classes=key_classes, cell=cell, narrowed=narrowed, shown=shown, heading=heading, outside=outside,
        page_no=page_no, pages=pages, empty=empty,
        cards=[_card(store, int(p), sel, colors) for p in page_ids])
