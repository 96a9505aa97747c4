"""Pretrain the toy-world base model (tiny SD3 transformer on 32x32 pixels) by flow matching, then score it.

Usage: python scripts/pretrain_toy_base.py [--steps N] [--out pslider_core/toy/assets/base]
       python scripts/pretrain_toy_base.py --evaluate-only   # re-score an existing base with the judge
The shipped weights were made with the defaults; rerun only to change the toy world.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pslider_core.toy.base_model import BASE_DIR
from pslider_core.toy.judge import load_judge
from pslider_core.toy.pretrain import PretrainConfig, pretrain, record_judge_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(PretrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--out", type=Path, default=BASE_DIR, help="output folder (default: the shipped base)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)")
    parser.add_argument("--evaluate-only", action="store_true", help="only score the base in --out with the judge")
    parser.add_argument("--eval-per-prompt", type=int, default=16, help="judge samples per prompt")
    parser.add_argument("--eval-steps", type=int, default=20, help="Euler steps of the judge samples")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.evaluate_only:
        cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
        pretrain(cfg, args.out, log=lambda msg: print(msg, flush=True))
    try:
        judge = load_judge()
    except FileNotFoundError as err:
        print(f"skipping the judge check: {err}")
        return
    record_judge_scores(args.out, judge, args.eval_per_prompt, args.eval_steps)


if __name__ == "__main__":
    main()
