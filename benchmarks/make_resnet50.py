"""Write a randomly initialised torchvision ResNet-50 state dict, for speed benchmarks only: nothing
is downloaded, and its predictions are meaningless (random weights). Needs torch and torchvision.

    python benchmarks/make_resnet50.py /tmp/resnet50-random.pth
    ascend-batch bench IMAGES --backend torch --devices cuda:0 --arch resnet50 \\
        --model-path /tmp/resnet50-random.pth --batch-size 256 --repeats 3
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write the state dict (.pth)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import torchvision

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet50(weights=None)  # random initialisation: no download
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} (random-initialised ResNet-50, seed {args.seed})")


if __name__ == "__main__":
    main()
