"""Long prompts: keras-hub's Gemma 3 (and our lean forward) against HF transformers on the same GGUF.

The embedded 270M attends through a 512-token sliding window in 15 of its 18 layers, so
prompts beyond 512 tokens are where two implementations of the window can part. For
prompts of each `--lengths` (the scoring template around ETHOS comments, cut to fit),
this compares the next-token logits at the last position over the whole vocabulary:
keras-hub's backbone and tied head vs HF's `Gemma3ForCausalLM` (logits_to_keep=1), and
the lean forward vs keras-hub on the 1,000 tokens keras-hub ranks highest.
Agreement to 1e-4 is the bar for lifting the scorer's 512-token cap.

    python bench/bench_long.py --lengths 400,600,1024,2048
"""

from __future__ import annotations

import argparse

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="400,600,1024,2048", help="prompt lengths in tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="long-prompts")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    import torch
    from bench_scoring import hf_model

    from agile.lean import LeanForward
    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.tokens import PromptTokenizer

    model = load_model()
    hf = hf_model("float32", "cpu")
    lean = LeanForward(model.backbone)
    tokenizer = PromptTokenizer.from_model(model)
    text = " ".join(common.ethos_comments(998))
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        ids = tokenizer.encode_prompts(PromptTemplate(), [text], length)[0][0]
        tokens = torch.tensor([ids], dtype=torch.int32)
        mask = torch.ones_like(tokens, dtype=torch.bool)
        with torch.inference_mode():
            hidden = model.backbone({"token_ids": tokens, "padding_mask": mask})
            ours = model.backbone.token_embedding(hidden[:, -1:], reverse=True)[0, -1].float()
            theirs = hf(input_ids=tokens.long(), logits_to_keep=1).logits[0, -1].float()
            top = torch.topk(ours, 1000).indices.tolist()
            lean_top = lean.label_logits(tokens, mask, top)[0]
        rows.append({
            "tokens": len(ids), "max_abs_dlogit_keras_hf": float((ours - theirs).abs().max()),
            "max_abs_dlogit_lean_keras_top1000": float((lean_top - ours[top]).abs().max()),
            "max_abs_logit": float(ours.abs().max()),
            "same_argmax": bool(int(ours.argmax()) == int(theirs.argmax())),
        })
        print(rows[-1], flush=True)
    common.print_table(["prompt tokens", "max |Δ logit| keras-hub vs HF", "max |Δ logit| lean vs keras-hub (top 1000)",
                        "max |logit|", "same argmax"],
                       [[r["tokens"], f"{r['max_abs_dlogit_keras_hf']:.2e}",
                         f"{r['max_abs_dlogit_lean_keras_top1000']:.2e}", r["max_abs_logit"], r["same_argmax"]]
                        for r in rows])
    common.write_result(args.name, {"rows": rows, "sliding_window": model.backbone.sliding_window_size}, "cpu")


if __name__ == "__main__":
    main()
