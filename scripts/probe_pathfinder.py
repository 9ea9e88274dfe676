"""Which normalisation lets a small network learn pathfinder? A probe behind docs/findings.md.

    python scripts/probe_pathfinder.py                 # 1,200 steps per model, ~8 min on 2 cores
    python scripts/probe_pathfinder.py --steps 400     # a quick look

Trains, on the same generated pathfinder data (64x64, no distractor, curves half the side long,
10,000 training and 1,000 validation images), each with AdamW at lr 1e-3, batch 32, same seed:
  cnn_bn   a plain 7-layer 3x3 CNN (32 channels, 3 stride-2 convs) with BatchNorm, global max pool;
  cnn_ln   the same CNN with LayerNorm over the channels at each position (as MambaOut and
           ConvNeXt normalise) instead of BatchNorm;
  pico     ablate's pico (SSM off, fan_in init);
  pico_ssm ablate's pico with the SSM.
Prints validation top-1 every 200 steps. Not a test: a measurement to rerun.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timm.layers import LayerNorm2d  # noqa: E402
from torch import nn  # noqa: E402

from ablate.models import build_model  # noqa: E402
from ablate.tasks import toydata  # noqa: E402

MODELS = ('cnn_bn', 'cnn_ln', 'pico', 'pico_ssm')


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, H, W) in [-1, 1], labels) of one split of an ImageFolder dataset."""
    images, labels = [], []
    for label, folder in enumerate(sorted((root / split).iterdir())):
        for path in sorted(folder.glob('*.png')):
            images.append(np.asarray(Image.open(path).convert('RGB')))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x * 2 - 1, torch.tensor(labels)


def plain_cnn(norm: type[nn.Module], width: int = 32) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1), nn.ReLU()]
    for stride in (2, 1, 2, 1, 2, 1):
        layers += [nn.Conv2d(width, width, 3, stride, 1), norm(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def make_model(name: str) -> nn.Module:
    if name == 'cnn_bn':
        return plain_cnn(nn.BatchNorm2d)
    if name == 'cnn_ln':
        return plain_cnn(LayerNorm2d)
    return build_model('pico', ssm=name == 'pico_ssm', num_classes=2, init='fan_in')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=1200)
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--data', type=Path, default=Path('data'))
    args = parser.parse_args()
    root = toydata.generate_pathfinder(args.data, (64, 64), 10000, 1000, seed=0, distractors=0, curve_length=0.5)
    (x_train, y_train), (x_val, y_val) = load_split(root, 'train'), load_split(root, 'val')
    for name in args.models:
        torch.manual_seed(0)
        model = make_model(name)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        order = torch.Generator().manual_seed(0)
        start, curve = time.time(), []
        for step in range(1, args.steps + 1):
            idx = torch.randint(0, len(x_train), (32,), generator=order)
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 200 == 0 or step == args.steps:
                model.eval()
                with torch.no_grad():
                    top1 = 100 * (model(x_val).argmax(1) == y_val).float().mean().item()
                model.train()
                curve.append(f'{step}: {top1:.1f}%')
        print(f'{name:9s} {", ".join(curve)}  ({time.time() - start:.0f} s)', flush=True)


if __name__ == '__main__':
    main()
