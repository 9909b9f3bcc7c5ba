"""`bfn data`: write data sets as webdataset shards (local or S3) and look inside shard sets."""
from __future__ import annotations

from pathlib import Path

from bfn_platform.commands.common import group, subcommand
from pipelines.tracking import bfn_home, data_root

SHARD_EPILOG = """examples:
  bfn data shard digits --split train --out .bfn/data/digits
  bfn data shard mnist --split test --out s3://my-bucket/bfn/mnist --shard-size 2000
  bfn data shard cifar10 --split train --out /data/cifar10 --source-dir ~/Downloads
  bfn data shard synthetic-mixture --split train --out file:///tmp/mix --seed 3

Shards go to OUT/SPLIT/SPLIT-000000-<sha8>.tar, ... and the manifest, written last, to
OUT/SPLIT/manifest.json: pass that URL to training, evaluation and `bfn data inspect`. A rewrite
that fails leaves the set already there complete and readable.

S3 uses the standard AWS environment variables: AWS_ENDPOINT_URL (for an S3-compatible
server), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION (or AWS_PROFILE).
mnist, cifar10 and text8 are downloaded once into $BFN_DATA_CACHE (default ~/.cache/bfn) and
checked (sha256; text8, which publishes none, by size); offline, place the canonical files in a
folder and pass --source-dir (BFN_OFFLINE=1 forbids downloads).  digits and the synthetic sets
need no download.
"""

INSPECT_EPILOG = """examples:
  bfn data inspect .bfn/data/digits/train/manifest.json
  bfn data inspect s3://my-bucket/bfn/mnist/test --n 16 --picture mnist.png
  bfn data inspect .bfn/data/mnist/train --data-kind discretised --num-classes 256

URL is a manifest or the folder that holds manifest.json.  Images are drawn as a PNG grid,
2-D points as a scatter plot, text and symbol sequences as lines (printed and saved).
"""


def register(sub) -> None:
    from pipelines.data.sources import SOURCES

    data_sub = group(sub, "data", __doc__, help="write data sets as webdataset shards and inspect shard sets",
                     epilog="run `bfn data shard --help` and `bfn data inspect --help` for examples")

    names = "\n".join(f"  {name:<18} {src.description}" for name, src in SOURCES.items())
    p = subcommand(data_sub, "shard", help="write a data set split as tar shards plus a manifest",
                   description=f"Write one split of a data set as webdataset tar shards and a manifest.\n\n"
                               f"data sets:\n{names}",
                   epilog=SHARD_EPILOG)
    p.add_argument("dataset", metavar="DATASET", help="one of: " + ", ".join(SOURCES))
    p.add_argument("--split", default="train", help="split to write (default: train)")
    p.add_argument("--out", default=None, metavar="URL",
                   help="folder: a path, file:///path or s3://bucket/prefix (default: $BFN_DATA_URL/DATASET, else $BFN_HOME/data/DATASET)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order and synthetic data (default: 0)")
    p.add_argument("--source-dir", default=None, metavar="DIR",
                   help="folder holding the canonical source files (offline machines); no download")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="write only N samples (a random subset)")
    p.add_argument("--no-labels", dest="labels", action="store_false",
                   help="leave out the class labels (written by default where the data set has them)")
    p.set_defaults(func=run_shard)

    p = subcommand(data_sub, "inspect", help="summarise a shard set and draw its first samples",
                   description="Print a manifest's summary and write a picture of the first samples.",
                   epilog=INSPECT_EPILOG)
    p.add_argument("url", metavar="URL", help="manifest URL (or its folder): path, file:// or s3://")
    p.add_argument("--n", "--count", dest="count", type=int, default=None, metavar="N",
                   help="samples to draw (default: 64 images / 500 points / 8 lines)")
    p.add_argument("--picture", default=None, metavar="PATH",
                   help="where to write the picture (default: .bfn/inspect/DATASET-SPLIT.png or .txt)")
    p.add_argument("--data-kind", choices=("continuous", "discretised", "discrete"), default=None,
                   help="read as this data kind instead of the manifest's default")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="K for --data-kind")
    p.add_argument("--verify", dest="verify", action="store_true", default=True,
                   help="check every shard against its sha256 and size (the default)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip that check")
    p.set_defaults(func=run_inspect)


def run_shard(args) -> int:
    from bfn_platform.console import console, progress_bar
    from pipelines.data import storage
    from pipelines.data.sources import get_source
    from pipelines.data.writer import write_shards

    source = get_source(args.dataset)
    source.check_split(args.split)
    out = args.out or f"{data_root()}/{source.name}"  # where the shipped configs look
    with progress_bar() as bar:
        tasks: dict[str, int] = {}

        def on_download(done: int, total: int | None) -> None:
            if "download" not in tasks:
                tasks["download"] = bar.add_task("download", total=total, info=source.name)
            bar.update(tasks["download"], completed=done)

        def on_progress(done: int, total: int, shard: str) -> None:
            if "shard" not in tasks:
                tasks["shard"] = bar.add_task("shards", total=total, info="")
            bar.update(tasks["shard"], completed=done, info=shard)

        manifest = write_shards(source, args.split, out, shard_size=args.shard_size, seed=args.seed,
                                source_dir=args.source_dir, limit=args.limit, labels=args.labels, on_progress=on_progress,
                                on_download=on_download)
    size = sum(s.bytes for s in manifest.shards)
    console.print(f"wrote {manifest.num_samples} {source.name}/{args.split} samples in {len(manifest.shards)} "
                  f"shards ({size / 1e6:.1f} MB)")
    console.print(f"manifest: {storage.redact(manifest.url)}", soft_wrap=True)
    return 0


def _summary(m) -> list[tuple[str, str]]:
    counts = [s.num_samples for s in m.shards]
    x = m.field
    kind = x.data_kind if x.num_classes is None else f"{x.data_kind}, K={x.num_classes}"
    rows = [
        ("data set", f"{m.dataset} / {m.split}"),
        ("samples", f"{m.num_samples} in {len(m.shards)} shards ({min(counts)}..{max(counts)} per shard, "
                    f"{sum(s.bytes for s in m.shards) / 1e6:.1f} MB)"),
        ("sample x", f"{x.dtype} {tuple(x.shape)} {x.content} ({kind})"),
        ("default read", m.default_read.label()),
    ]
    y = m.label_field
    if y is not None:  # the per-class counts the writer recorded; no shard is read for them
        names = y.class_names or [str(c) for c in range(y.num_classes)]
        counts = y.extra.get("class_counts")
        per_class = ", ".join(f"{n}: {c}" for n, c in zip(names, counts)) if counts else "counts not recorded"
        rows.append(("labels y", f"{y.num_classes} classes ({per_class})"))
    else:
        rows.append(("labels y", "none (no class labels in this set)"))
    if m.variants:
        rows.append(("variants", ", ".join(f"{k}: {v.label()}" for k, v in m.variants.items())))
    src = m.source
    origin = src.get("origin") or (src.get("generator") or {}).get("process", "")
    verified = src.get("verified")
    rows.append(("source", f"{src.get('name', m.dataset)} v{src.get('version', '?')}  {origin}"
                 + ("" if verified is None else f"  (checksums {'verified' if verified else 'NOT verified'})")))
    rows.append(("written", f"{m.created} by {m.writer.get('package', '?')} {m.writer.get('version', '')}, "
                            f"seed {m.seed}, shard size {m.shard_size}"))
    return rows


def run_inspect(args) -> int:
    import numpy as np

    from bfn_platform.console import console
    from pipelines.data import storage
    from pipelines.data.manifest import load_manifest
    from pipelines.data.reader import shard_dataset

    m = load_manifest(args.url)
    console.print(f"[bold]{storage.redact(m.url)}[/]", soft_wrap=True)
    for key, value in _summary(m):
        console.print(f"  {key:<13} {value}", soft_wrap=True, highlight=False)
    if args.verify:
        from pipelines.data.shard_blocks import verify_shards

        checked = verify_shards(m)  # a missing, truncated or altered shard: ShardError naming it, exit 1
        console.print(f"  {'shards':<13} all {checked} match their sha256 and size", highlight=False)

    x = m.field
    default_count = {"image": 64, "points": 500}.get(x.content, 8)
    count = min(args.count or default_count, m.num_samples)
    ds = shard_dataset(m, rank=0, world_size=1, data_kind=args.data_kind, num_classes=args.num_classes,
                       shuffle=False)
    samples = []
    for item in ds:
        samples.append(item["x"].numpy())
        if len(samples) >= count:
            break
    batch = np.stack(samples)
    spec = ds.transform.spec
    stem = str(bfn_home() / "inspect" / f"{m.dataset}-{m.split}")
    if x.content in ("text", "sequence"):
        from pipelines.pictures import save_text_samples

        path = Path(args.picture or f"{stem}.txt")
        alphabet = x.alphabet or "".join(chr(ord("a") + i) for i in range(spec.num_classes or 26))
        save_text_samples(batch, path, alphabet)
        console.print(f"first {len(batch)} samples:")
        for line in path.read_text().splitlines():
            console.print(f"  |{line}|", highlight=False, markup=False)
    elif x.content == "points":
        path = _scatter(batch, Path(args.picture or f"{stem}.png"), f"{m.dataset}/{m.split}: {len(batch)} points")
    else:
        from pipelines.pictures import save_image_grid

        images = batch
        if spec.data_kind == "discrete" and (spec.num_classes or 2) > 2:  # classes as grey levels in [-1, 1]
            images = images.astype(np.float32) * (2.0 / (spec.num_classes - 1)) - 1.0
        path = save_image_grid(images, Path(args.picture or f"{stem}.png"),
                               title=f"{m.dataset}/{m.split}, first {len(batch)} ({spec.label()})")
    console.print(f"picture of the first {len(batch)} samples ({spec.label()}): {path}", soft_wrap=True)
    return 0


def _scatter(points, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
