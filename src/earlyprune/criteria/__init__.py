"""Importance criteria, one module per method, each declaring its :class:`Criterion` (see :mod:`.spec`).

Every criterion returns, for every prunable parameter, a tensor of the parameter's shape where higher means
more important (keep); those with a structured form also return one value per channel of each channel
group. The built-in criteria are registered here, in the order :func:`earlyprune.methods` lists them; a
user's criterion is passed as an object or registered with :func:`register`.
"""

from __future__ import annotations

from .baselines import MAGNITUDE, RANDOM
from .compute import compute_channel_importance, compute_importance
from .crop import CROP, CROP_IT
from .grasp import GRASP
from .prospr import PROSPR
from .registry import register, registered, resolve, unregister
from .snip import SNIP, SNIP_IT
from .spec import DATA_NEEDS, Criterion, Scoring
from .synflow import SYNFLOW

for _criterion in (RANDOM, MAGNITUDE, SNIP, GRASP, SYNFLOW, PROSPR, CROP, SNIP_IT, CROP_IT):
    register(_criterion)

__all__ = [
    "Criterion", "Scoring", "DATA_NEEDS", "register", "unregister", "registered", "resolve",
    "compute_importance", "compute_channel_importance",
]
