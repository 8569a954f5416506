"""Checks the bundle configs run first (``initialize``): the command line's overrides name config keys, and each
setting lies in its range."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..utils.precision import PRECISIONS
from .command_line import config_files_on_command_line
from .run_error import refuse

__all__ = ["RUN_ARGUMENTS", "SETTING_RULES", "check_cuda_only_amp", "check_datalist", "check_overrides",
           "check_settings"]

# the arguments of ``monai.bundle run`` itself: everything else on its command line overrides a config key
# (and of the workflow it creates), and what launchers add
RUN_ARGUMENTS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
     "workflow_type", "workflow_name", "properties_path", "local_rank"}
)


def _option_keys(argv: list[str]) -> list[str]:
    """The ``--key`` / ``--key=value`` names on ``argv``, in order, as python-fire reads them: ``-`` becomes ``_``
    (``--num-iterations``), and a bare ``--`` ends the options (fire's own flags follow it)."""
    keys = []
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            keys.append(arg[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def _option_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def check_overrides(argv: list[str] | None = None) -> None:
    """Refuse a ``monai.bundle run`` override that names no key of the loaded configs.

    MONAI adds an unknown override as a new key and runs on, so ``--num_iteration 1000`` trains the default number
    of iterations without a word. Each ``--key`` (and each key of ``--args_file``) must be a top-level key of one of
    the ``--config_file`` files (for ``a#b``, ``a`` is checked) or an argument of ``run``. Does nothing when the
    process was not started with ``--config_file`` (e.g. a MONAI Label server building the workflow itself).
    """
    argv = sys.argv if argv is None else argv
    files = config_files_on_command_line(argv)
    if not files:
        return
    from monai.bundle import ConfigParser

    known = set(ConfigParser.load_config_files(files)) | RUN_ARGUMENTS | {"_meta_"}
    given = _option_keys(argv)
    args_file = _option_value(argv, "args_file")
    if args_file:
        given += [k for k in ConfigParser.load_config_file(args_file) if k not in RUN_ARGUMENTS]
    for key in given:
        top = key.split("::", 1)[0].split("#", 1)[0]  # MONAI's id separators: "::" (and the older "#")
        if top not in known and not (top.startswith("no") and top[2:] in known):  # fire's --noflag is flag=False
            close = difflib.get_close_matches(top, sorted(known), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            refuse(f"--{key}: not a key of {', '.join(files)}{hint} (MONAI would add it and ignore it)", argv=argv)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _one_of(*choices: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return value in choices

    return check


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


_BOOL = "True or False (spelt so: 'false' is read as a string, which is true)"

# what each setting a config passes to ``check_settings`` may be, and how to say so
SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_iterations": (_positive_int, "a positive integer"),
    "val_interval": (_positive_int, "a positive integer"),
    "batch_size": (_positive_int, "a positive integer"),
    "unlabeled_batch_size": (_positive_int, "a positive integer"),
    "sw_batch_size": (_positive_int, "a positive integer"),
    "pretrain_iterations": (_non_negative_int, "a non-negative integer"),
    "lr_step_origin": (_one_of("self_training", "run"), "'self_training' or 'run'"),
    "tsa_ramp_origin": (_one_of("self_training", "run"), "'self_training' or 'run'"),
    "pretrain_select": (_one_of("best", "last"), "'best' or 'last'"),
    "pretrain_loss": (_one_of("whole", "region"), "'whole' or 'region'"),
    "teacher_mode": (_one_of("train", "eval"), "'train' or 'eval'"),
    "ema_buffers": (_one_of("copy", "update", "ema_train"), "'copy', 'update' or 'ema_train'"),
    "sw_average": (_one_of("softmax", "logits"), "'softmax' or 'logits'"),
    # the precisions ssmis.utils.precision names: the inferer's windows and co-training's pseudo-label passes
    **{key: (_one_of(*PRECISIONS), " or ".join(repr(p) for p in PRECISIONS))
       for key in ("sw_precision", "teacher_precision")},
    # python-fire reads only True/False as booleans: "--amp false" arrives as the string "false", which is truthy
    **{switch: (_bool, _BOOL) for switch in ("amp", "use_tsa", "use_graph", "pretrain_reset_optimizer",
                                             "pretrain_restore_optimizer", "lcc", "pseudo_lcc", "tsa_bidirectional",
                                             "use_fixed", "use_dynamic", "use_cut", "confidence_weighted",
                                             "channels_last")},
}


def check_settings(**settings: Any) -> None:
    """Refuse a setting outside its range, naming the key: e.g. ``--num_iterations -500`` (before, it ran one
    validation interval) or ``--lr_step_origin selftraining`` (before, silently the same as ``'run'``).
    Keys without a rule in ``SETTING_RULES`` are a programming error."""
    for key, value in settings.items():
        if key not in SETTING_RULES:
            raise KeyError(f"check_settings: no rule for {key!r} (known: {sorted(SETTING_RULES)})")
        ok, expected = SETTING_RULES[key]
        if not ok(value):
            refuse(f"--{key}: must be {expected}, got {value!r}")


def check_cuda_only_amp(amp: bool, device: Any) -> None:
    """Refuse ``amp`` on a non-CUDA device for MONAI's own ``SupervisedTrainer``, which autocasts to CUDA only: on the
    CPU it would train in float32 while the flag said otherwise (the semi-supervised bundles' trainer autocasts to
    bfloat16 there)."""
    if amp and torch.device(device).type != "cuda":
        refuse(f"--amp True: this bundle trains with MONAI's SupervisedTrainer, which autocasts on CUDA only, so on "
               f"{torch.device(device).type!r} it would train in float32 anyway; use --amp False")


def check_datalist(dataset_dir: str, keys: tuple[str, ...] = ("labeled", "validation"),
                   argv: list[str] | None = None) -> None:
    """On a ``monai.bundle run`` command line, refuse a ``dataset_dir`` whose ``datalist.json`` is missing or
    malformed (its ``keys`` records: training reads ``labeled`` and ``validation``) before anything is built: read
    later, inside the trainer's construction, its message stood in the middle of MONAI's traceback. Elsewhere it checks
    nothing: the zoo's checks initialise a bundle without its data."""
    from ..data import load_datalist
    from ..utils.errors import DataError

    if not config_files_on_command_line(sys.argv if argv is None else argv):
        return
    try:
        for key in keys:
            load_datalist(dataset_dir, key)
    except DataError as e:
        refuse(f"--dataset_dir: {e}", DataError, argv=argv)
