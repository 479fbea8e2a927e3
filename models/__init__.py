"""Plain nn.Module video and skeleton models, created by preset name: `models.create('timesformer_tiny')`."""

# Importing a model file registers its presets.
from action_launch.models import (  # noqa: F401
    hiint,
    msg3d,
    stabn,
    timesformer,
    tsm,
)
from action_launch.models._registry import Preset, build, create, get_preset, list_presets, register_preset

__all__ = ["Preset", "build", "create", "get_preset", "list_presets", "register_preset"]
