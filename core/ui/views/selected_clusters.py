"""The union or intersection of the receptive fields (RFs) of the clusters selected on Clustering
(paper §5.2.2), shown by the Clustering and the Receptive fields pages.

Selected clusters are neuron sets (``core.ui.state.Selection.clusters``), so no tree is needed: the
members are every neuron of the valid sets (those naming neurons of this experiment; an old link's
dendrogram node numbers are ``ignored``), and each side's mask is ``receptive_fields.combine`` of the
members' RF masks on that side's image, at the page's RF threshold."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import clustering, receptive_fields

SIDES = ("benign", "adversarial")


@dataclass(frozen=True)
class SelectedRFs:
    valid: list[tuple[int, ...]]    # the selected sets that name neurons of this experiment
    ignored: list[tuple[int, ...]]  # the others (ids >= the number of neurons)
    members: np.ndarray             # sorted neuron ids of the valid sets
    masks: dict[str, np.ndarray]    # side -> (H,W) bool combined RF; empty when no set is valid


def selected_rfs(analysis, pair: int, clusters, set_op: str, rf_kw: dict) -> SelectedRFs:
    """The members of ``clusters`` and their RFs on ``pair``'s two images combined by ``set_op``."""
    n = analysis.num_neurons
    valid = [c for c in clusters if c and c[-1] < n]
    ignored = [c for c in clusters if c and c[-1] >= n]
    members = clustering.selected_members(valid, n)
    masks = {} if not len(members) else {
        side: receptive_fields.combine(analysis.rf_masks_for(pair, side, members.tolist(), **rf_kw),
                                       set_op).numpy() for side in SIDES}
    return SelectedRFs(valid, ignored, members, masks)
