"""Structured pruning that removes channels for real (EarlyCroP structured, Rachwan et al., ICML 2022).

``channel_groups`` traces the model into groups of coupled channels; ``channel_gates`` puts a gate on each
group's channels; ``channel_importance`` scores channels (random, magnitude, snip, crop);
``select_channels`` ranks them globally with a per-group minimum; ``shrink`` removes the rest physically
and keeps the caller's optimizer (and LR scheduler) working. ``prune_structured`` does all of it.
"""

from .api import prune_structured
from .gates import channel_gates
from .groups import ChannelGroup, GroupMember, GroupPlan, build_groups, channel_groups
from .importance import STRUCTURED_METHODS, channel_importance
from .selection import select_channels
from .surgery import ShrinkResult, layer_widths, shrink

__all__ = [
    "ChannelGroup", "channel_groups", "channel_gates", "channel_importance", "select_channels", "shrink",
    "ShrinkResult", "GroupMember", "GroupPlan", "build_groups", "STRUCTURED_METHODS", "layer_widths",
    "prune_structured",
]
