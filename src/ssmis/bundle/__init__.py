"""What the bundle configs call (:mod:`.checks`, :mod:`.layout`) and how a bundle is assembled and exported."""

from .checks import (RUN_ARGUMENTS, SETTING_RULES, check_cuda_only_amp, check_datalist, check_overrides,
                     check_settings)
from .command_line import config_files_on_command_line
from .layout import SHARED_BUNDLE, config_files, default_bundle_root, shared_configs
from .run_error import RunError, refuse
from .weights import check_weights_fit

__all__ = ["RUN_ARGUMENTS", "RunError", "SETTING_RULES", "SHARED_BUNDLE", "check_cuda_only_amp", "check_datalist",
           "check_overrides", "check_settings", "check_weights_fit", "config_files",
           "config_files_on_command_line", "default_bundle_root", "refuse", "shared_configs"]
