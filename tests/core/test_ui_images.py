"""core.ui.images: RF outlines and map overlays (issue 13, item 5) against slow per-pixel references, and
the inline data URIs that replace Streamlit's media files (item 9)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from core.ui import images as im
from core.ui.palette import rgb

CYAN = np.array(rgb(im.RF_COLOR))


def _slow_outline(mask, f, width):
    """The bands by definition: a display pixel's Chebyshev neighbourhood of radius ``width``, the
    image's outside counting as outside the mask."""
    big = np.kron(np.asarray(mask, int), np.ones((f, f), int)).astype(bool)
    h, w = big.shape
    inside = np.zeros_like(big)
    outside = np.zeros_like(big)
    for y in range(h):
        for x in range(w):
            near_in = near_out = False
            for yy in range(y - width, y + width + 1):
                for xx in range(x - width, x + width + 1):
                    if 0 <= yy < h and 0 <= xx < w and big[yy, xx]:
                        near_in = True
                    else:
                        near_out = True
            inside[y, x] = big[y, x] and near_out
            outside[y, x] = not big[y, x] and near_in
    return inside, outside


def _masks(rng, shape):
    yield np.zeros(shape, bool)
    yield np.ones(shape, bool)
    one = np.zeros(shape, bool)
    one[3, 4] = True
    yield one
    corner = np.zeros(shape, bool)
    corner[:3, -2:] = True  # touches two edges of the image
    yield corner
    for p in (0.1, 0.5):
        yield rng.random(shape) < p


@pytest.mark.parametrize("width", [1, 2])
def test_outline_is_exactly_the_mask_boundary(width):
    rng = np.random.default_rng(0)
    shape, size = (7, 6), 20  # factor 3 (ceil(20 / 7))
    for mask in _masks(rng, shape):
        inside, outside = im.outline(mask, size, width)
        ref_in, ref_out = _slow_outline(mask, 3, width)
        np.testing.assert_array_equal(inside, ref_in)
        np.testing.assert_array_equal(outside, ref_out)
        assert not (inside & outside).any()


def test_outline_at_display_size_of_28_and_32_px_images():
    rng = np.random.default_rng(1)
    for shape, f in (((28, 28), 6), ((32, 32), 5)):
        mask = rng.random(shape) < 0.2
        inside, outside = im.outline(mask)
        assert inside.shape == (shape[0] * f, shape[1] * f)
        ref_in, ref_out = _slow_outline(mask, f, im.OUTLINE_WIDTH)
        np.testing.assert_array_equal(inside, ref_in)
        np.testing.assert_array_equal(outside, ref_out)


def _image(rng, value=None, channels=3, shape=(28, 28)):
    if value is not None:
        return np.full((channels, *shape), value, np.float32)
    return rng.random((channels, *shape)).astype(np.float32)


def test_rf_overlay_pixels_follow_the_formula():
    rng = np.random.default_rng(2)
    for channels in (1, 3):
        image = _image(rng, channels=channels)
        mask = rng.random((28, 28)) < 0.3
        out = im.rf_overlay(image, mask)
        inside, outside = im.outline(mask)
        base = im.upscale(im.to_rgb(image)).astype(np.float64)
        big = np.kron(mask.astype(int), np.ones((6, 6), int)).astype(bool)
        assert out.shape == base.shape and out.dtype == np.uint8
        for y, x in zip(*np.nonzero(np.ones(big.shape, bool)), strict=True):
            if inside[y, x]:
                expected = CYAN
            elif outside[y, x]:
                expected = np.zeros(3)
            elif big[y, x]:
                expected = (1 - im.RF_TINT) * base[y, x] + im.RF_TINT * CYAN
            else:
                expected = base[y, x]  # outside the RF, away from the line: the image as it is
            assert np.abs(out[y, x] - expected).max() <= 1, (y, x, out[y, x], expected)


def test_rf_overlay_keeps_the_old_call_and_dim():
    rng = np.random.default_rng(3)
    image, mask = _image(rng), rng.random((28, 28)) < 0.3
    np.testing.assert_array_equal(im.rf_overlay(image, mask), im.rf_overlay(image, mask, im.DISPLAY, 1.0))
    dimmed = im.rf_overlay(image, mask, dim=0.25, width=0)
    big = np.kron(mask.astype(int), np.ones((6, 6), int)).astype(bool)
    base = im.upscale(im.to_rgb(image)).astype(np.float64)
    assert np.abs(dimmed[~big] - base[~big] * 0.25).max() <= 1


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_a_small_rf_is_visible_on_black_and_on_white(value):
    """The old drawing dimmed the outside: on a black image a small RF was a black square. Now the line
    differs strongly from the image on either background: the cyan band on black, the black band on
    white, and the inside is tinted away from the image."""
    image = _image(None, value, channels=1)
    mask = np.zeros((28, 28), bool)
    mask[10:12, 14:16] = True
    out = im.rf_overlay(image, mask).astype(int)
    bg = int(round(value * 255))
    inside, outside = im.outline(mask)
    strong = inside if value == 0 else outside
    assert strong.sum() > 0
    assert (np.abs(out[strong] - bg).max(axis=1) >= 200).all()
    centre = out[10 * 6 + 5:12 * 6 - 5, 14 * 6 + 5:16 * 6 - 5]  # 2×2 display px inside the bands
    assert centre.size and (np.abs(centre - bg).max(axis=-1) >= 40).all()
    untouched = ~(inside | outside | np.kron(mask.astype(int), np.ones((6, 6), int)).astype(bool))
    assert (out[untouched] == bg).all()  # the rest of the image is as it was


def test_gray_follows_the_luminance_formula():
    rng = np.random.default_rng(4)
    image = _image(rng, shape=(5, 4))
    g = im.gray(image)
    x = im.to_rgb(image).astype(np.float64) / 255
    for y in range(5):
        for xx in range(4):
            lum = 0.299 * x[y, xx, 0] + 0.587 * x[y, xx, 1] + 0.114 * x[y, xx, 2]
            expected = 255 * (im.GRAY_LO + (im.GRAY_HI - im.GRAY_LO) * lum)
            assert (np.abs(g[y, xx].astype(float) - expected) <= 1).all()
    black, white = im.gray(_image(None, 0.0, shape=(2, 2))), im.gray(_image(None, 1.0, shape=(2, 2)))
    assert (black == round(255 * im.GRAY_LO)).all() and (white == round(255 * im.GRAY_HI)).all()


def _slow_blend(bg, v, top):
    stops = im.MAP_STOPS
    out = np.zeros(v.shape + (3,))
    for idx in np.ndindex(v.shape):
        if v[idx] <= 0:
            out[idx] = bg[idx]
            continue
        t = min(v[idx] / top, 1.0)
        for (p0, c0), (p1, c1) in zip(stops, stops[1:], strict=False):
            if p0 <= t <= p1:
                c = np.array(c0) + (np.array(c1) - np.array(c0)) * (t - p0) / (p1 - p0)
                break
        a = im.MAP_ALPHA[0] + (im.MAP_ALPHA[1] - im.MAP_ALPHA[0]) * t
        out[idx] = (1 - a) * bg[idx] + a * c
    return out


def test_heatmap_over_the_image_follows_the_colour_scale():
    rng = np.random.default_rng(5)
    image = _image(rng, shape=(8, 8))
    values = rng.normal(size=(8, 8))  # negative values leave the image as it is
    mask = values > np.quantile(values, 0.8)
    out = im.heatmap(values, 16, mask, image=image)
    ref = np.kron(_slow_blend(im.gray(image).astype(float), values, values.max()), np.ones((2, 2, 1)))
    inside, outside = im.outline(mask, 16)
    line = inside | outside
    assert np.abs(out[~line] - ref[~line]).max() <= 1
    assert (out[inside] == CYAN).all() and (out[outside] == 0).all()
    # an explicit top: values at or above it at full colour
    half = im.heatmap(values, 16, image=image, top=values.max() / 2)
    ref = np.kron(_slow_blend(im.gray(image).astype(float), values, values.max() / 2), np.ones((2, 2, 1)))
    assert np.abs(half - ref).max() <= 1


def test_heatmap_colours_stand_out_on_black_and_white_images():
    values = np.zeros((28, 28))
    values[5:10, 5:10] = np.linspace(0.01, 1, 25).reshape(5, 5)
    for value in (0.0, 1.0):
        out = im.heatmap(values, image=_image(None, value, channels=1)).astype(int)
        grey = round(255 * (im.GRAY_LO + (im.GRAY_HI - im.GRAY_LO) * value))
        assert (out[:5 * 6] == grey).all()  # no value: the grey image
        coloured = out[5 * 6:10 * 6, 5 * 6:10 * 6].reshape(5, 6, 5, 6, 3)[:, 0, :, 0]  # one px per value
        spread = (coloured.max(axis=-1) - coloured.min(axis=-1)).ravel()  # a grey pixel has none
        assert (spread > 0).all()  # every positive value is tinted
        assert (spread[values[5:10, 5:10].ravel() >= 0.5] >= 80).all(), spread  # the upper half: clearly


def test_heatmap_old_call_legend_and_empty_map():
    values = np.arange(16, dtype=float).reshape(4, 4) - 3
    plain = im.heatmap(values, 8)
    assert plain.shape == (8, 8, 3)
    assert (plain[:2, :2] == 255).all()  # ≤ 0 on no image: white
    with_legend = im.heatmap(values, 8, legend=True)
    assert with_legend.shape == (8 + im.LEGEND_GAP + im.LEGEND_HEIGHT, 8, 3)
    np.testing.assert_array_equal(with_legend[:8], plain)
    np.testing.assert_array_equal(with_legend[-im.LEGEND_HEIGHT:], im.colorbar(8))
    assert im.map_scale(values) == 12 and im.map_scale(-values ** 2) == 1.0 and im.map_scale([]) == 1.0
    empty = im.heatmap(np.zeros((4, 4)), 8, image=np.zeros((1, 4, 4)))
    assert (empty == round(255 * im.GRAY_LO)).all()
    with pytest.raises(ValueError, match="size"):
        im.heatmap(values, 8, image=np.zeros((1, 5, 4)))


def test_colorbar_runs_from_low_to_high():
    bar = im.colorbar(50, 3)
    assert bar.shape == (3, 50, 3)
    t = (np.arange(50) + 1) / 50
    ref = _slow_blend(np.full((50, 3), 128.0), t, 1.0)
    assert np.abs(bar[0] - ref).max() <= 1
    assert (bar[0] == bar[2]).all()
    redness = bar[0, :, 0].astype(int) - bar[0, :, 1]  # over grey: opacity · (R − G) of the scale
    assert (np.diff(redness) >= -1).all() and redness[-1] - redness[0] > 100


def _decode(uri: str) -> np.ndarray:
    head = "data:image/png;base64,"
    assert uri.startswith(head)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(head):]))).convert("RGB"))


def test_data_uri_is_a_lossless_png_of_reasonable_size():
    rng = np.random.default_rng(6)
    image = _image(rng, shape=(32, 32))
    shown = im.show(image, "#1f77b4")
    uri = im.show(image, "#1f77b4", uri=True)
    np.testing.assert_array_equal(_decode(uri), shown)
    assert len(uri) < 40_000, len(uri)  # a noise image at 160 px + border: the worst case
    overlay = im.rf_overlay(image, rng.random((32, 32)) < 0.2)
    np.testing.assert_array_equal(_decode(im.data_uri(overlay)), overlay)
    np.testing.assert_array_equal(_decode(im.bordered(overlay, "#d62728", uri=True)),
                                  im.bordered(overlay, "#d62728"))


def test_every_st_image_of_the_app_is_inline():
    """Item 9: every ``.image(...)`` call of the app's pages gets a data URI, so no image goes through
    Streamlit's media files, which a newer rerun drops before a slow browser fetches them (404). A page
    either builds it inline (``data_uri(...)`` or a renderer called with ``uri=True``) or draws a picture
    its view model made (a name or attribute): ``test_every_picture_of_the_views_is_a_data_uri`` checks
    those."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    calls = 0
    for path in [root / "app.py", *sorted((root / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "image" and node.args):
                continue
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "store":
                continue  # not Streamlit
            calls += 1
            arg = node.args[0]
            inline = isinstance(arg, ast.Call) and (
                (isinstance(arg.func, ast.Name) and arg.func.id == "data_uri")
                or any(k.arg == "uri" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in arg.keywords))
            from_view = isinstance(arg, ast.Name | ast.Attribute)
            assert inline or from_view, f"{path.name}:{node.lineno}: st.image without a data URI"
    assert calls >= 7  # receptive fields (5), image space, clustering


def test_every_picture_of_the_views_is_a_data_uri(cifar20_store):
    """What the pages hand to ``st.image``: the views' pictures, each an inline PNG."""
    from core.analysis import Analysis
    from core.ui.state import Selection
    from core.ui.views.clustering import cluster_view
    from core.ui.views.image_space import image_space_view
    from core.ui.views.receptive_fields import context_view, pair_view

    analysis = Analysis(cifar20_store)
    sel = Selection(experiment=cifar20_store.id, cell=tuple(int(v) for v in cifar20_store.pairs.iloc[0][
        ["label", "adv_label"]]), pair=0, neuron=3, stride=4, clusters=((1, 2, 3),))
    Z = analysis.linkage(0)
    pair, ctx = pair_view(analysis, sel), context_view(analysis, sel, "activation", "own", 2)
    pictures = [p for v in pair.sides.values() for p in (v.picture, v.rf_picture, v.map_picture)]
    pictures += [p for p, _ in pair.cluster_pictures.values()]
    pictures += [p for row in ctx.rows.values() for p, _ in row]
    pictures += [p for p, _ in cluster_view(analysis, sel, Z).pictures]
    pictures += [p for card in image_space_view(cifar20_store, sel).cards for _, p in card.sides]
    assert len(pictures) >= 6 + 2 + 4 + 2 + 2  # the same fields the pages hand to st.image
    assert all(isinstance(p, str) and p.startswith("data:image/png;base64,") for p in pictures)
