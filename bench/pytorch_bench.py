"""The PyTorch side of `robustft bench`: the same workload with the same shapes and flags.

Image-tower throughput of a randomly initialised open_clip model (`pretrained=None`, nothing
downloaded): `infer` runs `encode_image` under `torch.no_grad()`; `train` runs the forward, a
1000-class linear head with cross-entropy, backward and a `torch.optim.AdamW` step
(lr 1e-5, weight decay 0.1 except biases/norms/embeddings) over the image tower and the head.
`--precision bf16` runs the forward (and loss) under `torch.autocast("cpu", torch.bfloat16)`,
PyTorch's CPU mixed precision with fp32 master weights, against robustft's bf16 matmuls.
Prints one JSON line:
{"arch","mode","batch","steps","precision","images_per_s","peak_rss_mb","engine"}.
Run it with the fixture venv: `.venv/bin/python bench/pytorch_bench.py --arch ViT-B-32 ...`.
"""
import argparse
import json
import os
import resource
import time

import open_clip
import torch

HEAD_CLASSES = 1000

# The bundled ShiftWorld model's architecture (robustft::pretrain::shiftworld_model).
SHIFTWORLD_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 24, "vocab_size": 1514, "width": 64, "heads": 2, "layers": 2},
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--mode", choices=["train", "infer"], default="infer")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the forward under CPU autocast to bfloat16")
    p.add_argument("--json", action="store_true", help="one JSON line instead of text")
    return p.parse_args()


def decays(name):
    return not (name.endswith(".bias") or "ln_" in name or "embedding" in name or name == "logit_scale")


def make_step(model, mode, batch, precision):
    size = model.visual.image_size[0]
    pixels = torch.randn(batch, 3, size, size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    if mode == "infer":
        def infer():
            with torch.no_grad(), autocast:
                model.encode_image(pixels)
        return infer
    head = torch.nn.Linear(model.visual.output_dim, HEAD_CLASSES, bias=False)
    labels = torch.randint(0, HEAD_CLASSES, (batch,))
    named = list(model.visual.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n)] + list(head.parameters())},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-5, weight_decay=0.1)

    def train():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(head(model.encode_image(pixels)), labels)
        loss.backward()
        optimizer.step()
    return train


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.arch == "shiftworld":
        model = open_clip.model.CLIP(**SHIFTWORLD_CFG)
    else:
        model = open_clip.create_model(args.arch, pretrained=None)
    model.train(args.mode == "train")
    step = make_step(model, args.mode, args.batch, args.precision)
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    report = {
        "arch": args.arch, "mode": args.mode, "batch": args.batch, "steps": args.steps,
        "precision": args.precision,
        "images_per_s": args.batch * args.steps / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "engine": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print("{arch} {mode} batch {batch} {precision}: {images_per_s:.2f} images/s over {steps} steps, "
              "{threads} threads, peak RSS {peak_rss_mb:.0f} MB ({engine})".format(**report))


if __name__ == "__main__":
    main()
