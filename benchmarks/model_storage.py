"""Model storage: plain folder copies vs content-addressed folders, side by side in one run.

    .venv/bin/python benchmarks/model_storage.py [--partitions 6] [--folder PATH] [--repeats 3]

The demo's situation: several constitution x blend partitions whose training rows are the same (human-only
labels under each constitution) hold identical weights, each with its own card, plus one model-cache entry.
Each partition's folder is the given model folder (default: the embedded MiniLM encoder, the reward model's
backbone and its size) plus a card that differs per partition. Both ways store them into a fresh local
storage root with `LocalStorage.put_dir` (`content_addressed=False`, as before, or `True`), interleaved
`--repeats` times; it prints the seconds to store them and the bytes on disk (every inode once, as `du -sb`
counts), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignment_dagster.core.storage import LocalStorage


def bytes_on_disk(root: Path) -> int:
    seen, total = set(), 0
    for p in root.rglob("*"):
        st = p.lstat()
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def sources(folder: Path, n: int, work: Path) -> list[Path]:
    """n copies of the model folder, each with its own card (made before timing starts)."""
    out = []
    for i in range(n):
        src = work / f"src-{i}"
        shutil.copytree(folder, src)
        (src / "alignment.json").write_text(json.dumps({"partition": f"c-{i}|human-only", "trained": True}))
        out.append(src)
    return out


def store_all(srcs: list[Path], root: Path, content_addressed: bool) -> tuple[float, int]:
    store = LocalStorage(root)
    t0 = time.perf_counter()
    for i, src in enumerate(srcs):
        store.put_dir(f"reward_model/c-{i}/human-only/model", src, content_addressed=content_addressed)
    store.put_dir("cache/models/reward_model/fp", srcs[0], content_addressed=content_addressed)
    return time.perf_counter() - t0, bytes_on_disk(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--folder", help="model folder to store (default: the embedded MiniLM encoder)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.folder:
        folder = Path(args.folder)
    else:
        from alignment_dagster.training.reward import RewardTrainingConfig

        folder = Path(RewardTrainingConfig().backbone_path())
    work = Path(tempfile.mkdtemp(prefix="bench-model-storage-"))
    try:
        srcs = sources(folder, args.partitions, work)
        size = sum(p.stat().st_size for p in srcs[0].rglob("*") if p.is_file())
        results: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
        for r in range(args.repeats):
            for mode in (False, True):
                root = work / f"root-{int(mode)}-{r}"
                results[mode].append(store_all(srcs, root, mode))
                shutil.rmtree(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.partitions} partitions + 1 cache entry of a {size / 1e6:.1f} MB folder, {args.repeats} runs\n"
    )
    print("| storage | seconds (median, runs) | bytes on disk |")
    print("|---|---|---:|")
    med = {}
    for mode, label in ((False, "plain copies"), (True, "content-addressed")):
        secs = [s for s, _ in results[mode]]
        med[mode] = (statistics.median(secs), results[mode][0][1])
        runs = ", ".join(f"{s:.2f}" for s in secs)
        print(f"| {label} | {med[mode][0]:.2f} ({runs}) | {med[mode][1]:,} |")
    print(
        f"\ncontent-addressed / plain: {med[True][0] / med[False][0]:.2f}x the time, "
        f"{med[False][1] / med[True][1]:.1f}x fewer bytes"
    )


if __name__ == "__main__":
    main()
