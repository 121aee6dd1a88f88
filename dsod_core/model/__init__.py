"""The DSOD network: config, backbone, prediction structures, head, detector and variants."""

from dsod_core.model.config import DSODConfig
from dsod_core.model.detector import DSOD
from dsod_core.model.registry import build_model, get_variant, list_variants, register_variant

__all__ = ["DSOD", "DSODConfig", "build_model", "get_variant", "list_variants", "register_variant"]
