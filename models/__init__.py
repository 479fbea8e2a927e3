"""Plain nn.Module video and skeleton models, created by preset name: `models.create('timesformer_tiny')`.

A model family is one module of this package: importing it registers its presets (`register_preset`) and the
upstream checkpoint formats its published weights come in (`_formats.register_format`). The registries import
every public module the first time they are read (`_registry.import_families`), so a new family is one new file
plus its test: no list elsewhere names it.
"""

from action_launch.models._registry import Preset, build, create, get_preset, list_presets, register_preset

__all__ = ["Preset", "build", "create", "get_preset", "list_presets", "register_preset"]
