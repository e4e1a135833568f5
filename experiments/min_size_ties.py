"""How do min_size candidates compare on validation across every recorded run?

    python experiments/min_size_ties.py [FOLDER ...]   (default: docs/results)

Reads each ``evaluation.json`` under the folders (what penn.run wrote: the calibration record
holds the best validation Dice of every ``min_size`` candidate) and, for each pair of candidates
(smaller, larger), counts the runs where the larger was better, tied or worse on validation.
Only validation numbers are read; the test split plays no part.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from itertools import combinations
from pathlib import Path


def records(folders: list[Path]):
    """(path, {min_size: best validation Dice}) of every run whose calibration compared sizes."""
    for folder in folders:
        for path in sorted(folder.rglob("evaluation.json")):
            post = json.loads(path.read_text()).get("calibration", {}).get("postprocess", {})
            dice = next((v for k, v in post.items() if k.startswith("val_") and
                         isinstance(v, dict)), None)  # fmt: skip
            if dice and len(dice) > 1:
                yield path, {int(k): float(v) for k, v in dice.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folders = [Path(a) for a in argv] or [Path("docs/results")]
    counts: dict[tuple[int, int], Counter] = {}
    worse: dict[tuple[int, int], list[str]] = {}
    n = 0
    for path, dice in records(folders):
        n += 1
        for small, large in combinations(sorted(dice), 2):
            diff = dice[large] - dice[small]
            verdict = "better" if diff > 0 else "tied" if diff == 0 else "worse"
            counts.setdefault((small, large), Counter())[verdict] += 1
            if verdict == "worse":
                worse.setdefault((small, large), []).append(str(path.parent))
    print(f"{n} runs with min_size candidates; the larger of each pair on validation:")
    print("| smaller | larger | better | tied | worse | runs where worse |")
    print("|---|---|---|---|---|---|")
    for (small, large), c in sorted(counts.items()):
        print(f"| {small} | {large} | {c['better']} | {c['tied']} | {c['worse']} "
              f"| {', '.join(worse.get((small, large), [])) or '–'} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
