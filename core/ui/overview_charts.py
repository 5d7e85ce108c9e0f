"""Chart builders and chart-event mappings of the Image space page (paper §5.1, Fig. 2-a/b).

Pure functions (no Streamlit import), so unit tests call them directly:

- ``scatter_figure``: a t-SNE scatterplot (Scattergl, WebGL, for every size: SVG markers stall the
  browser from about 10k points; one trace per class in the palette colour, ``customdata`` = pair id,
  hover = pair id, true and adversarial label names). The pairs of the current selection are
  highlighted with plotly's ``selectedpoints`` so both plots show the same pairs. With a class subset
  (many-class experiments, paper §6.2.2) the pairs outside it are one light-grey "other classes" trace
  underneath, so the t-SNE layout stays readable and only the subset's classes need colours.
- ``subset_colors``: the palette given to the subset's classes only.
- ``prepared_subset``: the rows and columns of an experiment prepared on a class subset (``[data]
  classes``): its classes, and the adversarial labels its attacks reached.
- ``selected_pairs``: a ``st.plotly_chart`` box/lasso event -> the selected pair ids (None when empty).
- ``matrix_frame`` / ``matrix_chart``: the prediction matrix as an Altair ``mark_rect`` (rows = true
  label, columns = adversarial label, or only the subset's ``rows`` × ``cols``; count as an orange
  colour and as text) with a point selection
  named ``MATRIX_PARAM`` over the fields (label, adv_label). Every cell is drawn, empty ones too, so a
  click on an empty cell (e.g. the diagonal) reaches the app and clears the cell. ``with_cell`` moves
  the selected cell's outline on a built spec.
- ``clicked_cell``: a Vega-Lite chart event (``st.vega_lite_chart`` / ``st.altair_chart``) -> the cell
  to select, toggling the current one off.
- ``probability_bar`` / ``legend``: small HTML pieces (the bar above each grid image, the palette key).

Class names are user text (folder names): they go into plotly strings through ``text.plotly_text`` and
into HTML through ``text.html_text``; Vega-Lite shows data values as text, so the matrix takes them as
they are.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from core.ui.text import html_text, plotly_text

SIDES = {"benign": ("tsne_benign_x", "tsne_benign_y"), "adversarial": ("tsne_adv_x", "tsne_adv_y")}
MATRIX_PARAM = "cell"          # the click selection
CELL_PARAM = "current_cell"   # the selected cell, outlined
OTHER_NAME = "other classes"  # the trace of the pairs outside a class subset
OTHER_COLOR = "#d9d9d9"


def color_labels(pairs: pd.DataFrame, side: str, color_by: str) -> np.ndarray:
    """The class each point is coloured by: the true label, or the prediction on that side's image
    (benign: the true label, since only correctly classified images are attacked; adversarial:
    the adversarial label)."""
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; sides: {', '.join(SIDES)}")
    if color_by == "true" or side == "benign":
        return pairs["label"].to_numpy(np.int64)
    if color_by == "predicted":
        return pairs["adv_label"].to_numpy(np.int64)
    raise ValueError(f"unknown colouring {color_by!r}: 'true' or 'predicted'")


def scatter_figure(pairs: pd.DataFrame, classes: list[str], colors: list[str], side: str,
                   color_by: str = "true", highlight=None, height: int = 300, subset=None):
    """The ``side`` t-SNE scatterplot; ``highlight`` (pair ids, or None for no highlight) are drawn
    selected and the other points faded. ``subset`` (a boolean mask over ``pairs``, or None for all):
    the pairs drawn in their class colours; the rest form the first trace, ``OTHER_NAME``, in grey."""
    import plotly.graph_objects as go

    x_col, y_col = SIDES[side]
    group = color_labels(pairs, side, color_by)
    ids = pairs["pair"].to_numpy(np.int64)
    x, y = pairs[x_col].to_numpy(), pairs[y_col].to_numpy()
    names = np.asarray([plotly_text(c) for c in classes], dtype=object)  # plotly reads HTML in text
    hover = ("true: " + names[pairs["label"].to_numpy(np.int64)]
             + "<br>adversarial: " + names[pairs["adv_label"].to_numpy(np.int64)])
    chosen = None
    if highlight is not None:
        chosen = np.zeros(len(pairs), dtype=bool)
        chosen[np.isin(ids, np.asarray(list(highlight), dtype=np.int64))] = True
    inside = np.ones(len(pairs), dtype=bool) if subset is None else np.asarray(subset, dtype=bool)
    traces = [] if inside.all() else [(OTHER_NAME, OTHER_COLOR, 3, np.flatnonzero(~inside))]
    traces += [(names[c], colors[c], 4, np.flatnonzero(inside & (group == c)))
               for c in np.unique(group[inside])]
    fig = go.Figure()
    for name, color, size, rows in traces:
        # WebGL whatever the size (see the module docstring); a subset leaves many points grey
        trace = dict(x=x[rows], y=y[rows], mode="markers", name=name, customdata=ids[rows],
                     hovertext=hover[rows],
                     hovertemplate="Pair #%{customdata}<br>%{hovertext}<extra></extra>",
                     marker=dict(color=color, size=size), unselected=dict(marker=dict(opacity=0.12)))
        if chosen is not None:
            trace["selectedpoints"] = np.flatnonzero(chosen[rows])
        fig.add_trace(go.Scattergl(**trace))
    title = "Benign images" if side == "benign" else "Adversarial images"
    fig.update_layout(height=height, margin=dict(l=4, r=4, t=28, b=4), showlegend=False,
                      title=dict(text=title, x=0.02, y=0.98, font=dict(size=13)),
                      dragmode="lasso", hovermode="closest", uirevision=side,
                      modebar=dict(orientation="v"))  # a vertical modebar leaves the title readable
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False)
    return fig


def subset_colors(num_classes: int, shown) -> list[str]:
    """A colour per class id: the palette's colours go, in class-id order, to the ``shown`` classes
    only (so a subset of up to 20 gets the 20 distinct ones, not 20 of 365 hues), grey to the rest."""
    from core.ui.palette import class_colors

    shown = sorted({int(c) for c in shown})
    out = [OTHER_COLOR] * num_classes
    for c, color in zip(shown, class_colors(len(shown)), strict=True):
        out[c] = color
    return out


def prepared_subset(pairs: pd.DataFrame, image_classes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The class subset the views show for an experiment prepared on some classes only (``[data]
    classes``; ``image_classes``: their ids, ``core.store.image_classes``): (rows, columns) in class-id
    order. Rows (true labels) are those classes; columns (adversarial labels) are those classes plus every
    adversarial label the pairs reached, since an attack may turn an image into any of the model's classes.
    Pairs' labels stay ids into the model's classes: nothing is renumbered."""
    rows = sorted({int(c) for c in image_classes})
    reached = np.unique(pairs["adv_label"].to_numpy(np.int64)).tolist()
    return tuple(rows), tuple(sorted(set(rows) | {int(c) for c in reached}))


def _get(obj, key, default=None):
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def selected_pairs(event) -> list[int] | None:
    """The pair ids of a plotly box/lasso selection event (the points' ``customdata``, a scalar or a
    list whose first item is the pair id), sorted and unique; None when nothing is selected (a
    cleared selection clears the filter)."""
    points = _get(_get(event, "selection", {}) or {}, "points", []) or []
    ids = set()
    for p in points:
        cd = _get(p, "customdata")
        if isinstance(cd, list | tuple):
            cd = cd[0] if cd else None
        if cd is None:
            continue
        ids.add(int(cd))
    return sorted(ids) if ids else None


def matrix_frame(matrix: np.ndarray, classes: list[str], rows=None, cols=None) -> pd.DataFrame:
    """One row per (true label, adversarial label) cell, empty cells included; ``rows`` / ``cols``
    (class ids, None for all) restrict the full ``matrix`` to a class subset. Labels stay class ids,
    so a click names the same cell either way."""
    k = matrix.shape[0]
    rows = np.arange(k) if rows is None else np.asarray(rows, dtype=np.int64)
    cols = np.arange(k) if cols is None else np.asarray(cols, dtype=np.int64)
    t, a = np.repeat(rows, len(cols)), np.tile(cols, len(rows))
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame({"label": t, "adv_label": a, "true_name": names[t], "adv_name": names[a],
                         "count": matrix[t, a].astype(np.int64)})


def matrix_chart(matrix: np.ndarray, classes: list[str], cell: tuple[int, int] | None = None,
                 height: int = 300, rows=None, cols=None):
    """The clickable prediction matrix (Altair); the selected ``cell`` is outlined; ``rows`` × ``cols``
    as in ``matrix_frame``. The outline reads the variable parameter ``CELL_PARAM``, so ``with_cell``
    moves it on the built spec without rebuilding (Altair's schema validation costs ~0.1 s per build)."""
    import altair as alt

    df = matrix_frame(matrix, classes, rows, cols)
    pick = alt.selection_point(name=MATRIX_PARAM, fields=["label", "adv_label"])
    current = alt.param(name=CELL_PARAM, value=_cell_value(cell))
    is_current = f"datum.label == {CELL_PARAM}[0] && datum.adv_label == {CELL_PARAM}[1]"
    names = np.asarray(classes, dtype=object)
    y_order = list(classes) if rows is None else names[np.asarray(rows, dtype=np.int64)].tolist()
    x_order = list(classes) if cols is None else names[np.asarray(cols, dtype=np.int64)].tolist()
    small = max(len(x_order), len(y_order)) > 12
    font = 9 if small else 10
    base = alt.Chart(df).encode(
        x=alt.X("adv_name:N", sort=x_order, title="adversarial label",
                axis=alt.Axis(labelAngle=-45, labelFontSize=font, labelLimit=60, labelOverlap=False,
                              titleFontSize=11)),
        y=alt.Y("true_name:N", sort=y_order, title="true label",
                axis=alt.Axis(labelFontSize=font, labelLimit=60, labelOverlap=False, titleFontSize=11)))
    top = max(int(df["count"].max()) if len(df) else 0, 1)
    rect = base.mark_rect(stroke="#ffffff", strokeWidth=0.5).encode(
        color=alt.condition("datum.count > 0",
                            alt.Color("count:Q", scale=alt.Scale(scheme="oranges", domain=[0, top]),
                                      legend=None),
                            alt.value("#f4f4f4")),
        stroke=alt.condition(is_current, alt.value("#000000"), alt.value("#ffffff")),
        strokeWidth=alt.condition(is_current, alt.value(2.5), alt.value(0.5)),
        tooltip=[alt.Tooltip("true_name:N", title="true"), alt.Tooltip("adv_name:N", title="adversarial"),
                 alt.Tooltip("count:Q", title="pairs")],
    ).add_params(pick)
    layers = [rect]
    if not small:
        layers.append(base.mark_text(fontSize=9).encode(
            text=alt.condition("datum.count > 0", alt.Text("count:Q"), alt.value("")),
            color=alt.condition(f"datum.count > {top / 2}", alt.value("#ffffff"), alt.value("#333333")),
            tooltip=[alt.Tooltip("true_name:N", title="true"),
                     alt.Tooltip("adv_name:N", title="adversarial"), alt.Tooltip("count:Q", title="pairs")]
        ))
    # SVG (not canvas): every cell is a DOM node with an aria-label, so browser tests and screen
    # readers can find a cell by its classes
    return alt.layer(*layers).add_params(current).properties(
        height=height, title=alt.TitleParams("Prediction matrix", fontSize=13, anchor="start"),
        usermeta={"embedOptions": {"renderer": "svg"}})


def matrix_spec(matrix: np.ndarray, classes: list[str], cell: tuple[int, int] | None = None,
                height: int = 300, rows=None, cols=None) -> dict:
    """``matrix_chart`` as a Vega-Lite dict (what the page caches and hands to ``st.vega_lite_chart``)."""
    return matrix_chart(matrix, classes, cell, height, rows, cols).to_dict()


# The counts are drawn over their cells; without this a click on a number would hit the text mark,
# not the cell, and select nothing (Vega-Lite has no per-mark switch; the SVG renderer allows CSS).
MATRIX_CSS = "<style>[data-testid=stVegaLiteChart] g.mark-text { pointer-events: none; }</style>"


def _cell_value(cell) -> list[int]:
    return [-1, -1] if cell is None else [int(cell[0]), int(cell[1])]


def with_cell(spec: dict, cell: tuple[int, int] | None) -> dict:
    """``spec`` (a ``matrix_chart(...).to_dict()``, changed in place and returned) outlining ``cell``."""
    for p in spec.get("params", []):
        if p.get("name") == CELL_PARAM:
            p["value"] = _cell_value(cell)
            return spec
    raise ValueError(f"not a prediction-matrix spec: no parameter {CELL_PARAM!r}")


def clicked_cell(event, current: tuple[int, int] | None = None, matrix: np.ndarray | None = None
                 ) -> tuple[int, int] | None:
    """The cell a matrix click selects: the clicked (true, adversarial) cell; None (clear) when the
    selection was emptied, when the current cell was clicked again, or when the clicked cell holds no
    pair (the diagonal and other empty cells)."""
    values = _get(_get(event, "selection", {}) or {}, MATRIX_PARAM, None)
    if not isinstance(values, list | tuple) or not values:
        return None
    cells = []
    for v in values:
        try:
            cells.append((int(_get(v, "label")), int(_get(v, "adv_label"))))
        except (TypeError, ValueError):
            continue
    if not cells:
        return None
    new = [c for c in cells if c != current]
    if not new:
        return None
    cell = new[-1]
    if matrix is not None:
        k = matrix.shape[0]
        if not (0 <= cell[0] < k and 0 <= cell[1] < k) or matrix[cell] == 0:
            return None
    return cell


def probability_bar(prob: float, color: str, label: str) -> str:
    """A thin bar whose filled length is ``prob`` (in the class colour), with the label on hover."""
    pct = 100.0 * min(max(float(prob), 0.0), 1.0)
    tip = html_text(f"{label}: {pct:.1f}%")
    return (f'<div title="{tip}" style="height:7px;background:#e6e6e6;border-radius:2px;'
            f'margin:0 0 2px 0;overflow:hidden"><div style="height:7px;width:{pct:.1f}%;'
            f'background:{color}"></div></div>')


def legend(classes: list[str], colors: list[str]) -> str:
    """The palette key as one wrapping line of coloured swatches and class names."""
    items = [f'<span style="white-space:nowrap;margin-right:10px"><span style="display:inline-block;'
             f'width:10px;height:10px;border-radius:2px;background:{c};margin-right:3px"></span>'
             f'{html_text(n)}</span>' for n, c in zip(classes, colors, strict=True)]
    return f'<div style="font-size:12px;line-height:1.6">{"".join(items)}</div>'
