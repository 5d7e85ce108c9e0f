"""View models: one pure function per page view (no Streamlit) that returns everything the page draws,
so a page is layout only (widgets, callbacks, drawing) and every value it shows is unit-tested without
a browser. ``image_space.image_space_view``, ``receptive_fields.rf_view``, ``clustering.cluster_view``;
``selected_clusters.selected_rfs`` combines the RFs of the clusters picked on Clustering for both pages.

``map_kwargs`` is the one place the pages' vulnerability-map arguments come from."""
from __future__ import annotations


def map_kwargs(analysis, sel) -> dict:
    """The ``Analysis.vulnerability_maps`` keywords of a selection: its stride, or the image size's
    default (``Analysis.map_stride``), at the device's best precision."""
    return {"stride": analysis.map_stride(sel.stride), "precision": "auto"}


def maps_ready(analysis, sel) -> bool:
    """Whether the selected pair's vulnerability maps are already computed (else a page shows a
    spinner while its view computes them)."""
    return analysis.has_vulnerability_maps(sel.pair, **map_kwargs(analysis, sel))
