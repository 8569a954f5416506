"""``python -m ssmis.bundle``: the config list of a bundle, and its export for the model zoo.

    python -m ssmis.bundle configs supervised_la train evaluate      # the --config_file value, printed
    python -m monai.bundle run --config_file "$(python -m ssmis.bundle configs supervised_la train)" ...
    python -m ssmis.bundle export supervised_la --output dist/       # a self-contained bundle folder and zip
    python -m ssmis.bundle ship supervised_la --source runs/x/models/model.pt --configs cpu_protocol \
        --val-dice 0.80 --command "python benchmarks/la_protocol.py ..."   # the weights the bundle ships
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .layout import config_files


def _bundle_folder(name: str, bundles: Path) -> Path:
    path = Path(name)
    folder = path if (path / "configs" / "metadata.json").is_file() else bundles / name
    if not (folder / "configs" / "metadata.json").is_file():
        known = sorted(p.name for p in bundles.glob("*") if (p / "configs" / "metadata.json").is_file())
        looked = path if len(path.parts) > 1 else folder  # a path is looked up as it is; a bare name in --bundles
        where = (f"bundles in {bundles}: {', '.join(known)}" if known else
                 f"no bundles in {bundles.resolve()}: run from the repository root or pass --bundles <folder>")
        raise SystemExit(f"{name}: not a bundle (no configs/metadata.json in {looked}); {where}")
    return folder


def _dice(text: str) -> float:
    """argparse type: a Dice score from 0 to 1 (``0.8297``, not ``82.97``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN, which JSON cannot hold
        raise argparse.ArgumentTypeError(f"{text}: a Dice score lies from 0 to 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssmis.bundle", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--bundles", type=Path, default=Path("bundles"),
                        help="folder of the bundles, where a bare bundle name is looked up (default: ./bundles)")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("configs", help="print the --config_file list (shared configs first) for a bundle")
    c.add_argument("bundle", help="bundle name or folder")
    c.add_argument("names", nargs="+", help="config names in merge order: train, evaluate, inference, "
                                            "multi_gpu_train, cpu_protocol, shipped_weights (last), "
                                            "ablation_no_tsa, ...")
    e = sub.add_parser("export", help="write a self-contained bundle folder and zip for the model zoo")
    e.add_argument("bundle", help="bundle name or folder")
    e.add_argument("--output", type=Path, default=Path("dist"), help="where the folder and zip go (default dist/)")
    e.add_argument("--weights", type=Path, default=None,
                   help="models/model.pt to ship (default: the bundle's shipped weights/model.pt; without them, a "
                        "models/model.pt trained in the bundle's folder)")
    w = sub.add_parser("ship", help="make a training run's weights the ones the bundle ships (weights/model.pt and "
                                    "weights/weights.json)")
    w.add_argument("bundle", help="bundle name or folder")
    w.add_argument("--source", type=Path, required=True, help="the run's model.pt (or model_best.pt)")
    w.add_argument("--configs", nargs="*", default=[], help="configs merged after inference that the weights fit, "
                                                           "e.g. cpu_protocol")
    w.add_argument("--val-dice", type=_dice, required=True, help="the weights' Dice on the validation split, 0 to 1")
    w.add_argument("--command", dest="train_command", required=True, help="the command that trained them")
    w.add_argument("--note", default="", help="anything else a user should know (data, labelled count, seed)")
    w.add_argument("--float32", action="store_true", help="keep float32 (default: float16, half the size)")
    args = parser.parse_args(argv)
    folder = _bundle_folder(args.bundle, args.bundles)
    if args.command == "configs":
        try:
            files = config_files(folder, *args.names)
        except FileNotFoundError as err:
            parser.error(str(err))
        print(repr(files))
        own = (folder / "configs").resolve()
        if not any(Path(f).parent == own for f in files):  # monai.bundle run finds bundle_root from the last own file
            print(f"note: every file is a shared one, so monai.bundle run cannot tell the bundle: add --bundle_root "
                  f"{folder}", file=sys.stderr)
        return 0
    if args.command == "ship":
        from .weights import ship_weights

        try:
            target = ship_weights(folder, args.source, args.configs,
                                  {"val_dice": args.val_dice, "command": args.train_command, "note": args.note},
                                  half=not args.float32)
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
        print(target)
        return 0
    from .export import default_weights, export_bundle

    try:
        zip_path = export_bundle(folder, args.output, weights=args.weights)
    except (ValueError, OSError) as err:  # bad weights or record, an --output that is a file: the path is named
        parser.exit(2, f"{parser.prog} export: error: {err}\n")
    packed = args.weights or default_weights(folder)
    print(f"models/model.pt: {packed}" if packed else "no weights packed (the bundle has none; --weights names some)",
          file=sys.stderr)
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
