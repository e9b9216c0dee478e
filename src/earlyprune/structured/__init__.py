"""Structured pruning that removes channels for real: channel groups from a traced dependency graph,
channel gates and importance, global selection with a per-layer minimum, and physical surgery that
keeps the caller's optimizer working (EarlyCroP structured, Rachwan et al., ICML 2022)."""

from .api import prune_structured
from .gates import channel_gates
from .groups import ChannelGroup, GroupPlan, build_groups
from .importance import STRUCTURED_METHODS, channel_importance
from .selection import select_channels
from .surgery import ShrinkResult, layer_widths, shrink

__all__ = ["prune_structured", "channel_gates", "ChannelGroup", "GroupPlan", "build_groups", "channel_importance",
           "STRUCTURED_METHODS", "select_channels", "ShrinkResult", "layer_widths", "shrink"]
