"""The layout of the memory's weight gradients, and what it costs an eager MAC step (CPU).

The dual form's read (``mac_minimal.dual_form.dual_chunk``) applies the memory's weights and momentum
to a chunk of vectors, ``W x_s`` for every row s, four times per chunk.
:func:`~mac_minimal.dual_form.apply_weights` computes it as ``(W x^T)^T``; the obvious ``x @ W^T``
gives the same numbers, but autograd then hands back
W's gradient transposed (a non-contiguous view), and every weight-sized elementwise operation of
backward (the chunk end's ``D W + B S``, the momentum, the gradients of the scalar coefficients)
pairs a transposed tensor with a contiguous one. Three measurements, float32, one thread:

* ``isolated``: one multiplication of two (2, 512, 128) tensors (the size of a weight at setting B),
  both contiguous or one of them transposed, median microseconds (small enough to stay in cache);
* ``gradient_layout``: for each form, whether the gradients of W1, W2 and their momentum arrive
  contiguous through a chain of three chunks (:func:`mac_minimal.dual_form.dual_chunk`);
* ``step_s``: the eager training step of chapter 7's settings A and B (:data:`bench_training_step.SETTINGS`)
  with each form, from the same weights and tokens, interleaved (:func:`common.median_seconds`), with the
  memory-free model's step for scale; ``first_loss`` shows the two forms compute the same step.

Writes ``book/results/weight_layout.json``.

    .venv/bin/python benchmarks/bench_weight_layout.py            # under a minute
    .venv/bin/python benchmarks/bench_weight_layout.py --smoke    # toy sizes, seconds; writes nothing
"""

import time

import torch

import mac_minimal.dual_form as dual_form
from bench_compiled import SMOKE_SETTINGS, build_step
from bench_training_step import SETTINGS
from common import RESULTS, environment, median_seconds, parse_benchmark_args, save_results

OUT = RESULTS / "weight_layout.json"
FORMS = {"(W x^T)^T": dual_form.apply_weights,            # the package's form
         "x @ W^T": lambda w, x: x @ w.mT}                # the same numbers, W's gradient transposed


def with_form(form: str, job):
    """``job`` run with the dual form's ``apply_weights`` set to ``FORMS[form]`` (restored after)."""
    def run() -> object:
        dual_form.apply_weights = FORMS[form]
        try:
            return job()
        finally:
            dual_form.apply_weights = FORMS["(W x^T)^T"]
    return run


def isolated_mul_us(shape: tuple[int, ...], repeats: int, calls: int = 50) -> dict:
    """Median microseconds of one ``a * b``, both contiguous, and with b a transposed view (each timed
    job runs the product ``calls`` times)."""
    a, b = torch.randn(shape), torch.randn(shape)
    b_transposed = torch.randn(*shape[:-2], shape[-1], shape[-2]).mT
    operands = {"contiguous * contiguous": b, "contiguous * transposed": b_transposed}

    def products(other: torch.Tensor) -> None:
        for _ in range(calls):
            a * other                                     # each result freed at once: it stays in cache

    jobs = {name: lambda other=other: products(other) for name, other in operands.items()}
    return {name: s / calls * 1e6 for name, s in median_seconds(jobs, repeats).items()}


def gradient_layouts(b: int, c: int, d: int, f: int) -> dict:
    """Per form: ``{"W1": every gradient contiguous?, ...}`` through a chain of three dual chunks."""
    result = {}
    for form in FORMS:
        gen = torch.Generator().manual_seed(0)
        weights = tuple((0.1 * torch.randn(*shape, generator=gen)).requires_grad_()
                        for shape in ((b, f, d), (b, d, f), (b, d), (b, d)))
        momentum = tuple(torch.zeros_like(w) + 0 * w for w in weights)
        seen: dict[str, bool] = {}

        def record(name: str):
            def hook(grad: torch.Tensor) -> None:
                seen[name] = seen.get(name, True) and grad.is_contiguous()
            return hook

        def chain() -> None:
            nonlocal weights, momentum
            loss = 0
            for _ in range(3):
                for name, t in zip(("W1", "W2", "S1", "S2"), (*weights[:2], *momentum[:2])):
                    t.register_hook(record(name))
                k, v, q = (torch.randn(b, c, d, generator=gen) for _ in range(3))
                theta, eta, alpha = (0.1 * torch.rand(b, c, generator=gen) for _ in range(3))
                weights, momentum, y = dual_form.dual_chunk(weights, momentum, weights, k, v, theta, eta, alpha,
                                                            q, 1.0, 1e-5)
                loss = loss + y.square().mean()
            loss.backward()
        with_form(form, chain)()
        result[form] = seen
    return result


def main() -> None:
    args = parse_benchmark_args(__doc__, OUT, repeats=7, what="timed steps per job")
    start = time.perf_counter()
    settings = {key: SETTINGS[key] | (SMOKE_SETTINGS[key] if args.smoke else {}) for key in SETTINGS}
    steps, first_loss = {}, {}
    for key, setting in settings.items():
        size = dict(seq_len=setting["seq_len"], batch=setting["batch"], compiled=False)
        jobs = {f"{key} mac {form}": with_form(form, build_step(setting["config"], **size)) for form in FORMS}
        jobs[f"{key} mac_no_memory"] = build_step(setting["config"] | dict(use_memory=False), **size)
        first_loss[key] = {name.split(" ", 1)[1]: job() for name, job in jobs.items()}
        steps[key] = {name.split(" ", 1)[1]: s for name, s in median_seconds(jobs, args.repeats).items()}
        print(key, {name: f"{s * 1e3:.1f} ms" for name, s in steps[key].items()}, flush=True)
    isolated = isolated_mul_us((2, 512, 128), args.repeats)
    layouts = gradient_layouts(2, 16, 128, 512) if not args.smoke else gradient_layouts(2, 4, 8, 16)
    print("isolated mul, us:", isolated, "\ngradients contiguous:", layouts)
    payload = {
        "what": __doc__.split("\n\n")[0],
        "step_s": "median seconds of an eager training step (forward, loss, backward, AdamW, zero_grad) over "
                  "repeats, the jobs interleaved, after one warm-up step; keys: setting, then 'mac <form>' or "
                  "'mac_no_memory'",
        "isolated_us": "median microseconds of one (2, 512, 128) multiplication",
        "gradient_layout": "whether each gradient arrived contiguous (True) or as a transposed view (False)",
        "forms": {"(W x^T)^T": "mac_minimal.dual_form.apply_weights: (w @ x.mT).mT.contiguous()",
                  "x @ W^T": "x @ w.mT"},
        "smoke": args.smoke, "repeats": args.repeats, "environment": environment(),
        "settings": settings,
        "step_s_by_setting": steps, "first_loss": first_loss, "isolated_us_by_case": isolated,
        "gradient_layout_by_form": layouts, "total_seconds": time.perf_counter() - start,
    }
    save_results(payload, args.out, OUT, args.smoke)


if __name__ == "__main__":
    main()
