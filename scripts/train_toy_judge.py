"""Train the held-out judge of the toy world (colour + shape classifier) and save it into pslider_core/toy/assets.

Usage: python scripts/train_toy_judge.py [--steps 3000] [--out DIR]
The judge is for evaluation only (valid image rate), never a training reward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pslider_core.toy.judge import ASSETS_DIR, distractor_rejection, judge_accuracy, save_judge, train_judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1, help="training-data seed (evaluation uses other seeds)")
    parser.add_argument("--out", type=Path, default=ASSETS_DIR)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    judge = train_judge(args.steps, args.batch_size, args.lr, args.seed, log=lambda m: print(m, flush=True))
    metrics = {
        "heldout_pairs_clean": judge_accuracy(judge, 1000, seed=777, split="heldout", noise=False),
        "heldout_pairs_noisy": judge_accuracy(judge, 1000, seed=778, split="heldout", noise=True),
        "all_pairs_noisy": judge_accuracy(judge, 1000, seed=779, split="all", noise=True),
        "all_pairs_noisy_anywhere": judge_accuracy(judge, 1000, seed=780, split="all", noise=True, jitter=None),
        "distractor_rejection": distractor_rejection(judge, 500, seed=555),
        "train_steps": args.steps,
        "seed": args.seed,
    }
    for name, value in metrics.items():
        print(f"{name}: {value}")
    save_judge(judge, args.out, metrics)
    print(f"saved judge to {args.out}")


if __name__ == "__main__":
    main()
