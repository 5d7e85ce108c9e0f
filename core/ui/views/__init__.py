"""View models: one pure function per page view (no Streamlit) that returns everything the page draws,
so a page is layout only (widgets, callbacks, drawing) and every value it shows is unit-tested without
a browser. ``image_space.image_space_view``, ``receptive_fields.rf_view``, ``clustering.cluster_view``;
``selected_clusters.selected_rfs`` combines the RFs of the clusters picked on Clustering for both pages.

``map_settings`` is the one place the pages' vulnerability-map settings come from."""
from __future__ import annotations

from core.map_settings import MapSettings


def map_settings(analysis, sel) -> MapSettings:
    """The selection's map settings (``core.map_settings``): its k and stride, or the image size's
    defaults (also for a stride the pages do not offer at this size), at the device's best precision."""
    return analysis.map_settings(k=sel.k, stride=sel.stride, precision="auto", offered=True)


def maps_ready(analysis, sel) -> bool:
    """Whether the selected pair's vulnerability maps are already computed (else a page shows a
    spinner while its view computes them)."""
    return analysis.has_vulnerability_maps(sel.pair, map_settings(analysis, sel))
