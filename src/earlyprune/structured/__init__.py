"""Structured pruning that removes channels for real (EarlyCroP structured, Rachwan et al., ICML 2022).

``channel_groups`` traces the model into groups of coupled channels; ``channel_gates`` puts a gate on each
group's channels; ``channel_importance`` scores channels with any criterion that has a structured form;
``select_channels`` ranks them globally with a per-group minimum; ``shrink`` removes the rest physically
and keeps the caller's optimizer (and LR scheduler) working. ``prune_channels`` does all of it.
"""

from .api import ChannelPruneResult, prune_channels
from .gates import channel_gates
from .groups import ChannelGroup, GroupMember, GroupPlan, build_groups, channel_groups
from .importance import channel_importance, structured_methods
from .selection import select_channels
from .surgery import ShrinkResult, layer_widths, shrink

__all__ = [
    "ChannelGroup", "channel_groups", "channel_gates", "channel_importance", "select_channels", "shrink",
    "ShrinkResult", "GroupMember", "GroupPlan", "build_groups", "structured_methods", "layer_widths",
    "prune_channels", "ChannelPruneResult",
]
