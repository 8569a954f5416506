"""Command line: ``python -m ssmis.data {prepare-la,prepare-acdc,prepare-images,demo} --help``."""

from __future__ import annotations

import argparse
import sys

from ..utils.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ssmis.data",
        description="Prepare datasets for the ssmis bundles. Each subcommand writes a folder holding "
        "datalist.json (keys: labeled, unlabeled, validation), the `dataset_dir` every bundle reads. "
        "Output folders are written atomically: on bad input the command exits non-zero, names the "
        "offending file, and leaves any existing output untouched. Because an output folder is replaced as a whole, "
        "one that is or contains an input folder, or an existing non-empty folder without datalist.json, is refused.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    la = sub.add_parser(
        "prepare-la",
        help="convert LA (volumes/<id>/mri_norm2.h5 + train.list) to NIfTI",
        description="Convert the LA training set in the UA-MT layout to DIR/imagesTr/<id>.nii.gz, "
        "DIR/labelsTr/<id>.nii.gz (0.625 mm, or --spacing) and DIR/datalist.json. The split follows "
        "train.list: the first --labeled cases are labelled, the last --val are validation, the rest unlabelled. "
        "At the native spacing the image is stored losslessly (uint8 with NIfTI slope/intercept).",
    )
    la.add_argument("--source", required=True,
                    help="LA folder holding train.list and volumes/ (e.g. ../shared/data/LA)")
    la.add_argument("--output", required=True, help="output dataset folder (replaced atomically)")
    la.add_argument("--spacing", type=float, default=0.625,
                    help="isotropic output spacing in mm (default 0.625, native; 1.25 for the CPU protocol)")
    la.add_argument("--labeled", type=int, default=8, help="number of labelled cases, from the top of train.list "
                    "(default 8, the 10%% setting; 16 is the 20%% setting)")
    la.add_argument("--val", type=int, default=8,
                    help="number of validation cases, from the end of train.list (default 8)")
    la.add_argument("--classes", type=int, default=2, help="declared number of classes incl. background (default 2)")

    acdc = sub.add_parser(
        "prepare-acdc",
        help="convert ACDC (volumes/patientNNN_frameMM.h5 + patients.list) to NIfTI, split by patient",
        description="Convert ACDC frames in the SSL4MIS layout to DIR/imagesTr/<patient>_<frame>.nii.gz, "
        "DIR/labelsTr/... (H x W x slices, 4 classes: background, right ventricle, myocardium, left ventricle; no "
        "spacing in the files, so distances are in pixels) and DIR/datalist.json. Patients are split, never frames: "
        "both frames of a patient are labelled, unlabelled or validation together. By default in patients.list "
        "order: the first --labeled-patients labelled, the last --val-patients validation, the rest unlabelled.",
    )
    acdc.add_argument("--source", required=True, help="ACDC folder holding patients.list and volumes/ "
                      "(e.g. ../shared/data/ACDC)")
    acdc.add_argument("--output", required=True, help="output dataset folder (replaced atomically)")
    acdc.add_argument("--labeled-patients", type=int, default=3, help="labelled patients (default 3)")
    acdc.add_argument("--val-patients", type=int, default=4, help="validation patients (default 4)")
    acdc.add_argument("--seed", type=int, help="shuffle the patients with this seed before splitting (default: "
                      "patients.list order)")
    acdc.add_argument("--labeled-ids", help="comma-separated patients to label, instead of --labeled-patients "
                      "(e.g. patient038,patient050,patient099, the literature's 3-patient setting)")
    acdc.add_argument("--val-ids", help="comma-separated validation patients, instead of --val-patients")

    im = sub.add_parser(
        "prepare-images",
        help="make a datalist from your own NIfTI folders",
        description="Write DIR/datalist.json for the *.nii(.gz) files in --images. Images with a same-named file "
        "in --labels are split in name order (first --labeled labelled, last --val validation); all others "
        "are unlabelled. Every label used is checked against its image.",
    )
    im.add_argument("--images", required=True, help="folder of NIfTI images")
    im.add_argument("--labels", help="folder of NIfTI labels with the same file names")
    im.add_argument("--output", required=True, help="output folder for datalist.json")
    im.add_argument("--labeled", type=int, required=True, help="number of labelled cases")
    im.add_argument("--val", type=int, default=0, help="number of validation cases (default 0)")
    im.add_argument("--classes", type=int, help="declared number of classes incl. background (default: inferred)")

    demo = sub.add_parser(
        "demo",
        help="generate a small deterministic synthetic dataset",
        description="Generate deterministic synthetic images and labels (nested ellipsoids in noise) in 3D or 2D, "
        "binary or multi-class, with a datalist. Used by `make demo` and the tests; needs no download.",
    )
    demo.add_argument("--output", required=True, help="output dataset folder")
    demo.add_argument("--dims", type=int, choices=(2, 3), default=3, help="2 or 3 (default 3)")
    demo.add_argument("--classes", type=int, default=2, help="number of classes incl. background (default 2)")
    demo.add_argument("--cases", type=int, default=12, help="number of cases (default 12)")
    demo.add_argument("--labeled", type=int, default=4, help="labelled cases (default 4)")
    demo.add_argument("--val", type=int, default=2, help="validation cases (default 2)")
    demo.add_argument("--size", type=int, help="in-plane size in voxels (default 64 in 3D, 96 in 2D)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare-la":
            from .la import prepare_la

            out = prepare_la(args.source, args.output, args.spacing, args.labeled, args.val, args.classes)
        elif args.command == "prepare-acdc":
            from .acdc import prepare_acdc

            ids = {k: [i.strip() for i in v.split(",") if i.strip()] if v is not None else None
                   for k, v in (("labeled", args.labeled_ids), ("val", args.val_ids))}
            out = prepare_acdc(args.source, args.output, args.labeled_patients, args.val_patients, args.seed,
                               ids["labeled"], ids["val"])
        elif args.command == "prepare-images":
            from .images import prepare_images

            out = prepare_images(args.images, args.output, args.labeled, args.labels, args.val, args.classes)
        else:
            from .synthetic import make_synthetic_dataset

            out = make_synthetic_dataset(
                args.output, args.dims, args.classes, args.cases, args.labeled, args.val, args.size, seed=args.seed
            )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/datalist.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
