"""Plain nn.Module video and skeleton models, created by preset name: `models.create('timesformer_tiny')`."""
from models._registry import Preset, build, create, get_preset, list_presets, register_preset

# Importing a model file registers its presets.
from models import timesformer  # noqa: F401,E402
from models import msg3d  # noqa: F401,E402
from models import stabn, tsm  # noqa: F401,E402
from models import hiint  # noqa: F401,E402

__all__ = ["Preset", "build", "create", "get_preset", "list_presets", "register_preset"]
