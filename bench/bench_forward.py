"""Per-forward cost: one label-logit forward at a few shapes, keras-hub's layers against the lean forward.

A forward of 1 x 16 tokens is mostly fixed cost (Python per layer and op, kernel
launches, weight reads); 16 x 64 is mostly matmuls. Each shape runs both engines
interleaved, `--repeats` times after a warm-up; the median is reported, with the time
each engine's linear FLOPs alone would take at the dense matmul peak measured in this run
(the lean forward runs its last layer's queries, output and FFN at one position a row,
keras-hub's at all) and the rest ("overhead") beside it, and max |Δ logit| between the engines.

    python bench/bench_forward.py --threads 1 --repeats 15
    python bench/bench_forward.py --threads 1 --repeats 7 --compile   # + torch.compile of the lean forward

"matmuls only" runs just the forward's linear matmuls at each shape, over the same weights in
place (random activations): lean minus it is the time outside the BLAS (norms, RoPE, attention,
Python), and it minus the time at peak is what the BLAS itself loses at that shape.

With `--compile` a third engine, `torch.compile(lean.label_logits)` (inductor, static shapes:
one compile per shape), runs beside the two; its compile time and max |Δ logit| against the
eager lean forward are reported (the issue's parity bar is 1e-5 in float32).
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np

SHAPES = ((1, 16), (16, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the lean forward")
    parser.set_defaults(repeats=15)
    args = parser.parse_args()
    common.setup(args.device, args.threads)

    import torch

    from agile.forward import label_logits
    from agile.lean import LeanForward, _project_heads, linear_flops
    from agile.models import load_model

    peak = common.Peak(args.device, (args.dtype,))
    model = load_model(dtype=args.dtype)
    lean = LeanForward(model.backbone)
    labels = [236743, 236799]
    engines = {"keras": lambda ids, mask: label_logits(model, ids, mask, labels),
               "lean": lambda ids, mask: lean.label_logits(ids, mask, labels)}

    activations: dict[tuple, dict[int, torch.Tensor]] = {}

    def matmuls_only(ids, mask):
        """The lean forward's linear matmuls alone, at its shapes, over the blocks' own kernels."""
        first = lean.blocks[0]
        widths = {model.backbone.hidden_dim, first.ffw_linear.kernel.shape[0],
                  first.attention.num_query_heads * first.attention.head_dim}
        x = activations.setdefault(ids.shape, {w: torch.randn(*ids.shape, w, dtype=lean.dtype, device=args.device)
                                               for w in widths})
        for i, block in enumerate(lean.blocks):
            a, h = block.attention, x[model.backbone.hidden_dim]
            for dense in (a.key_dense, a.value_dense):
                _project_heads(h, dense.kernel.value)
            # the last layer's queries, output and FFN run at each row's last position only
            at = {w: v[:, -1:] for w, v in x.items()} if i == len(lean.blocks) - 1 else x
            h = at[model.backbone.hidden_dim]
            _project_heads(h, a.query_dense.kernel.value)
            out = a.output_dense.kernel.value.reshape(-1, model.backbone.hidden_dim)
            at[out.shape[0]] @ out
            h @ block.gating_ffw.kernel.value, h @ block.gating_ffw_2.kernel.value
            at[block.ffw_linear.kernel.shape[0]] @ block.ffw_linear.kernel.value

    engines["matmuls only"] = matmuls_only
    if args.compile:
        compiled = torch.compile(lean.label_logits, dynamic=False)
        engines["compiled"] = lambda ids, mask: compiled(ids, mask, labels)
    compile_s = {}
    gen = torch.Generator().manual_seed(0)
    inputs = {s: (torch.randint(10, 100_000, s, generator=gen, dtype=torch.int32).to(args.device),
                  torch.ones(s, dtype=torch.bool, device=args.device)) for s in SHAPES}
    times: dict[tuple, list[float]] = {}
    deltas = {}
    with torch.inference_mode():
        for shape, (ids, mask) in inputs.items():
            out = {}
            for name, fn in engines.items():  # warm-up (and, for the compiled engine, its compile)
                start = time.perf_counter()
                out[name] = fn(ids, mask)
                if name == "compiled":
                    compile_s[shape] = time.perf_counter() - start
            deltas[shape] = float((out["keras"] - out["lean"]).abs().max())
            if args.compile:
                deltas[(shape, "compiled")] = float((out["compiled"] - out["lean"]).abs().max())
        for _ in range(args.repeats):
            for shape, (ids, mask) in inputs.items():
                for name, fn in engines.items():
                    common.sync()
                    start = time.perf_counter()
                    fn(ids, mask)
                    common.sync()
                    times.setdefault((shape, name), []).append(time.perf_counter() - start)
            peak.sample()
    peak = peak[args.dtype]

    rows, results = [], {}
    for (shape, name), ts in times.items():
        ms = float(np.median(ts)) * 1e3
        # keras-hub's forward runs every kernel at every position; the lean one (and its matmuls)
        # runs the last layer's queries, output and FFN at one position a row.
        flops = linear_flops(model.backbone, shape[0] * shape[1], shape[0], lean=name != "keras")
        ideal = flops / (peak * 1e9) * 1e3
        common.Peak.check(f"{name} at {shape[0]} x {shape[1]}: the linear FLOPs' rate", ideal / ms)
        results[f"{shape[0]}x{shape[1]}-{name}"] = {"median_ms": ms, "matmul_bound_ms": ideal,
                                                   "overhead_ms": ms - ideal, "all_ms": [t * 1e3 for t in ts]}
        rows.append([f"{shape[0]} x {shape[1]}", name, ms, ideal, ms - ideal, f"{deltas[shape]:.1e}"])
    print(f"\none forward, {args.dtype}, {args.device}, {args.threads} threads, median of {args.repeats} "
          f"interleaved; matmul peak {peak:.0f} GFLOP/s\n")
    common.print_table(["tokens", "engine", "ms", "ms at peak (linear FLOPs)", "overhead ms",
                        "max |Δ logit| keras vs lean"], rows)
    for shape in SHAPES:
        k, le = (results[f"{shape[0]}x{shape[1]}-{e}"] for e in ("keras", "lean"))
        print(f"{shape[0]} x {shape[1]}: lean {k['median_ms'] / le['median_ms']:.2f}x faster, overhead "
              f"{le['overhead_ms'] / k['overhead_ms']:.2f} of keras-hub's")
        mm = results[f"{shape[0]}x{shape[1]}-matmuls only"]
        print(f"{shape[0]} x {shape[1]}: of lean's overhead, {mm['overhead_ms']:.1f} ms is the BLAS short of its peak "
              f"at these shapes, {le['median_ms'] - mm['median_ms']:.1f} ms is outside the matmuls")
        if args.compile:
            c = results[f"{shape[0]}x{shape[1]}-compiled"]
            print(f"{shape[0]} x {shape[1]}: compiled {le['median_ms'] / c['median_ms']:.2f}x faster than lean, "
                  f"compile {compile_s[shape]:.1f} s, max |Δ logit| vs lean {deltas[(shape, 'compiled')]:.1e}")
    common.write_result(args.name or f"forward-{args.device}-{args.dtype}-t{args.threads}" +
                        ("-compile" if args.compile else ""),
                        {"peak_gflops": peak, "results": results,
                         "compile_s": {f"{s[0]}x{s[1]}": v for s, v in compile_s.items()},
                         "max_abs_dlogit": {f"{s[0]}x{s[1]}": d for s, d in deltas.items()
                                            if not isinstance(s[0], tuple)},
                         "max_abs_dlogit_compiled_vs_lean": {f"{s[0][0]}x{s[0][1]}": d for s, d in deltas.items()
                                                              if isinstance(s[0], tuple)}},
                        args.device)


if __name__ == "__main__":
    main()
