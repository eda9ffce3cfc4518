"""How far the feature scorer's backbone is from another CPU engine (issue 13), side by side.

The default feature scorer runs three ShuffleNetV2-x0.5 passes per image (the image and two
blurs) through :class:`~quadformer.tokenize.scorers.backbones.FastShuffleNet` on oneDNN. This
probe times, in one process with interleaved repeats (min of ``--reps``), one stream's work as
the scorer does it (one intra-op thread, a chunk of ``--batch`` images at 256 px):

* ``FastShuffleNet``: the image and the blurs' small images (its stem computed from them);
* ``onnxruntime``: the same folded network exported to ONNX, run on the image and its two
  full-size blurs (``ORT_ENABLE_ALL``, one thread, no spinning), if onnxruntime is installed
  (the ``test`` extra);
* the split of the ``FastShuffleNet`` time into stems (conv, ReLU, max-pool), stage2 and the
  rest of the network.

It is a probe, not a path the models run: it tells whether another engine would pay.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/feature_engine_probe.py [--batch 8] [--reps 7]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_all
import torch

from quadformer.tokenize.scorers.backbones import FastShuffleNet, shufflenet_backbone
from quadformer.tokenize.scorers.blur import blur, downsample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="images per chunk (the scorer's stream chunk: 8)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tap = shufflenet_backbone(32, weights="random").eval()
    fast = FastShuffleNet.from_tap(tap)
    b, n = args.batch, args.size
    x = torch.randn(b, 3, n, n)
    s2, s4 = downsample(x, 2), downsample(x, 4)  # the blurs' small images, as the scorer makes them
    full = torch.cat([x, blur(x, 1), blur(x, 2)])
    passes = [x, (s2, 2), (s4, 4)]

    with torch.inference_mode():
        stem = fast._stem(x)
        split_value = fast.steps[fast.split][0][1]

        def head() -> None:
            fast._run(fast.steps[:fast.split + 1], {0: stem})

        vals = {0: stem}
        fast._run(fast.steps[:fast.split + 1], vals)
        buf = torch.cat([vals[split_value]] * 3)

        def tail() -> None:
            fast._run(fast.steps[fast.split + 1:], {split_value: buf})

        fns = {
            "FastShuffleNet, 3 passes": lambda: fast.forward_passes(passes),
            "  stem of the image": lambda: fast._stem(x),
            "  stems of the 2 blurs": lambda: (fast._stem_up(s2, 2), fast._stem_up(s4, 4)),
            "  stage2 x 3": lambda: (head(), head(), head()),
            "  stage3..conv5 (3 passes)": tail,
        }
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            blob = io.BytesIO()
            torch.onnx.export(tap, (full,), blob, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}}, opset_version=17, dynamo=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(blob.getvalue(), so, providers=["CPUExecutionProvider"])
            feed = {"x": full.numpy()}
            ref = fast.forward_passes(passes)
            err = ((torch.from_numpy(sess.run(None, feed)[0]) - ref).abs().max() / ref.abs().max()).item()
            fns["onnxruntime, 3 full-size passes"] = lambda: sess.run(None, feed)
        t = {k: v["min"] * 1e3 for k, v in run_all.interleaved(fns, args.reps, torch.device("cpu")).items()}
    base = t["FastShuffleNet, 3 passes"]
    print(f"{n} px, chunk of {b}, 1 thread, min of {args.reps} interleaved rounds")
    print(f"{'':34s} {'ms/img':>8s} {'share / speed-up':>17s}")
    for k, v in t.items():
        rel = f"{v / base:.0%}" if k.startswith("  ") else f"{base / v:.2f}x"
        print(f"{k:34s} {v / b:8.3f} {rel:>17s}")
    if ort is not None:
        print(f"onnxruntime vs FastShuffleNet: max |diff| / max |output| {err:.1e}")
    else:
        print("onnxruntime not installed: pip install onnxruntime to compare")


if __name__ == "__main__":
    main()
