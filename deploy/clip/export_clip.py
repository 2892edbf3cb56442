"""Export a CLIP model as an edgekd zero-shot teacher: its image tower to ONNX, its prompt-ensembled class text
embeddings to an npz, for `edgekd train --teacher zeroshot:OUT/image.onnx,OUT/text.npz` (edgekd.train.zeroshot).

Runs where open_clip is installed (`pip install open_clip_torch`; it downloads the weights on first use).
It cannot run on a machine without network access to the weights; importing this file needs nothing
beyond the standard library (open_clip, torch and numpy are imported when it runs).

    python deploy/clip/export_clip.py --model ViT-B-32 --pretrained laion2b_s34b_b79k \\
        --data cifar:/data/cifar-10-batches-py --out clip-b32
    edgekd train --data cifar:/data/cifar-10-batches-py --model resnet20 --method dho \\
        --teacher zeroshot:clip-b32/image.onnx,clip-b32/text.npz --labeled-fraction 0.1 --out runs/r20-dho-clip

Writes
- OUT/image.onnx: the image tower, (N, 3, S, S) normalised images -> (N, D) image embeddings (not
  L2-normalised: the teacher normalises), opset 17, dynamic batch; checked against PyTorch with ONNX Runtime;
- OUT/text.npz: `embeddings` (C, D), one row per class in the data's order, each the normalised mean of
  the normalised embeddings of the class name in every prompt template (CLIP's prompt ensembling);
  `class_names` (the data's names, which edgekd checks), `logit_scale` (the model's, exp of the learned
  log-scale, about 100), `input_size`, `mean`, `std`, `interpolation` (the model's preprocessing).

Class names come from an edgekd data spec (`--data`, exactly the names and order training will check),
or `--classes a,b,c` / `--classes-file` (one per line, in the data's order). `--prompt-names FILE` gives the
words to put into the prompts when the data's names are not words (e.g. ImageNet's wnids), one per line in
the same order. Templates: CLIP's 18 CIFAR templates by default, or `--templates-file` (one per line,
with `{}` where the name goes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# CLIP's prompt ensemble for CIFAR (Radford et al. 2021, the CLIP repository's notebooks/prompts)
TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
    "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
    "a photo of a big {}.", "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    ap.add_argument("--pretrained", default="laion2b_s34b_b79k", help="open_clip pretrained tag")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="edgekd data spec whose class names (and order) the teacher must match")
    src.add_argument("--classes", help="comma-separated class names, in the data's order")
    src.add_argument("--classes-file", help="class names, one per line, in the data's order")
    ap.add_argument("--prompt-names", help="words for the prompts, one per line, same order (default: the names)")
    ap.add_argument("--templates-file", help="prompt templates, one per line with {} (default: CLIP's 18 CIFAR ones)")
    ap.add_argument("--out", required=True, help="output directory (image.onnx, text.npz)")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--device", default="cpu")
    return ap


def read_lines(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def class_names(args: argparse.Namespace) -> list[str]:
    if args.data:
        from edgekd.data import load_dataset

        return list(load_dataset(args.data).class_names)
    return [c.strip() for c in args.classes.split(",")] if args.classes else read_lines(args.classes_file)


def write_text_npz(path: Path, embeddings, names: list[str], logit_scale: float, input_size: int,
                   mean, std, interpolation: str = "bicubic") -> None:
    """The TEXT.npz edgekd reads (edgekd.train.zeroshot.read_text_head)."""
    import numpy as np

    np.savez(path, embeddings=np.asarray(embeddings, dtype=np.float32), class_names=np.array(names),
             logit_scale=np.array(float(logit_scale)), input_size=np.array(int(input_size)),
             mean=np.asarray(mean, dtype=np.float64), std=np.asarray(std, dtype=np.float64),
             interpolation=np.array(interpolation))


def preprocessing(model, open_clip) -> tuple[int, tuple, tuple, str]:
    """(side, mean, std, interpolation) of the model's own evaluation transform."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    side = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(cfg.get("mean", getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD))
    interp = cfg.get("interpolation", "bicubic")
    return int(side), mean, std, interp if interp in ("bicubic", "bilinear") else "bicubic"


def text_embeddings(model, tokenizer, words: list[str], templates, device: str):
    """(C, D) prompt-ensembled class embeddings: per class the normalised mean of normalised prompt embeddings."""
    import torch

    rows = []
    with torch.no_grad():
        for w in words:
            e = model.encode_text(tokenizer([t.format(w) for t in templates]).to(device)).float()
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(dim=0)
            rows.append(m / m.norm())
    return torch.stack(rows).cpu().numpy()


def export_image_tower(model, side: int, path: Path, opset: int, device: str) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_image(x)

    tower = ImageTower(model).eval()
    x = torch.randn(2, 3, side, side, device=device)
    torch.onnx.export(tower, (x,), str(path), input_names=["images"], output_names=["embedding"], opset_version=opset,
                      dynamic_axes={"images": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
    with torch.no_grad():
        want = tower(x).float().cpu().numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.cpu().numpy()})[0]
    err = float(np.abs(got - want).max())
    if err > 1e-3 * max(1.0, float(np.abs(want).max())):
        sys.exit(f"ONNX export of the image tower differs from PyTorch by {err:.3g}")
    print(f"wrote {path} (ONNX Runtime matches PyTorch: max |diff| {err:.2g})")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        import open_clip
    except ImportError:
        sys.exit("open_clip is not installed: pip install open_clip_torch (this script runs where it is)")
    names = class_names(args)
    words = read_lines(args.prompt_names) if args.prompt_names else names
    if len(words) != len(names):
        sys.exit(f"--prompt-names has {len(words)} lines for {len(names)} classes")
    templates = read_lines(args.templates_file) if args.templates_file else TEMPLATES
    model, _, _ = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained, device=args.device)
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    side, mean, std, interp = preprocessing(model, open_clip)
    export_image_tower(model, side, out / "image.onnx", args.opset, args.device)
    w = text_embeddings(model, open_clip.get_tokenizer(args.model), words, templates, args.device)
    write_text_npz(out / "text.npz", w, names, float(model.logit_scale.exp()), side, mean, std, interp)
    print(f"wrote {out / 'text.npz'}: {len(names)} classes x {w.shape[1]} dims, {len(templates)} templates, "
          f"input {side}px, logit scale {float(model.logit_scale.exp()):.1f}")
    print(f"use: edgekd train ... --teacher zeroshot:{out / 'image.onnx'},{out / 'text.npz'}")


if __name__ == "__main__":
    main()
