"""How many ops one frame dispatches: the code predictor (upstream's modules vs folded) and one talker step.

    python -m bench.qwen_ops [--layers 5] [--talker-layers 28] [--rows 1]

Counts every ATen op that does work (views excluded) in one call of each
predictor, and in one talker step with upstream's RMSNorm modules and with the
fused spelling the talker stack uses, on tiny random-weight models with the
real depths (5 predictor layers, 28 talker layers) and sampling on: a proxy,
independent of the machine, for the kernels a frame launches on a GPU, where
a frame is bound by their number, not their size (issue 16).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import tempfile
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import qwen_models


class OpCount(TorchDispatchMode):
    """Counts dispatched ops by name, leaving out the ones that only return a view of an input."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        schema = func._schema
        if schema.is_mutable or not any(r.alias_info is not None for r in schema.returns):
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _talker(layers: int, talker_layers: int) -> Any:
    from server.engines.qwen import compat

    compat.install()
    import qwen_tts  # type: ignore[import-untyped]

    tiny = qwen_models.SIZES["tiny"]
    size = dataclasses.replace(tiny, name=f"tiny-{layers}-{talker_layers}", predictor=qwen_models._transformer(32, 64, layers, 2, 1, 16),
                               talker={**tiny.talker, "num_hidden_layers": talker_layers})  # fmt: skip
    qwen_models.SIZES[size.name] = size
    _, base = qwen_models.build_models(tempfile.mkdtemp(), size.name, device="cpu")
    return qwen_tts.Qwen3TTSModel.from_pretrained(str(base), dtype=torch.float32).model.talker


def _counted(fn: Any) -> collections.Counter[str]:
    with torch.inference_mode():
        fn()  # first call: lazy set-up stays out of the count
        counter = OpCount()
        with counter:
            fn()
    return counter.ops


def count(layers: int, rows: int, talker_layers: int = 1) -> dict[str, collections.Counter[str]]:
    """Ops of one predictor frame per predictor kind, and of one talker step (``talker upstream``/``talker fused``)."""
    from server.engines.qwen import layers as stacks
    from server.engines.qwen.batch import PREDICTORS
    from server.engines.qwen.sampling import Settings

    talker = _talker(layers, talker_layers)
    vocab = talker.code_predictor.config.vocab_size
    settings = Settings.allocate(rows, vocab, torch.device("cpu"))
    for row in range(rows):
        settings.assign(row, {"do_sample": True, "top_k": 50, "temperature": 0.9}, vocab)
    args = (torch.randn(rows, 1, talker.config.hidden_size), torch.zeros(rows, dtype=torch.long), settings,
            torch.empty(rows, talker.config.num_code_groups - 1, vocab).exponential_())  # fmt: skip
    counts = {}
    for name in ("folded", "eager"):  # the compiled predictor's ops are generated kernels, not dispatched ops
        counts[name] = _counted(functools.partial(PREDICTORS[name](talker, rows, top_p=False), *args))
    x, positions = torch.randn(rows, 1, talker.config.hidden_size), torch.full((rows,), 10)
    for name, norm in (("talker fused", stacks.fused_norm), ("talker upstream", stacks.upstream_norm)):
        counts[name] = _counted(functools.partial(stacks.TalkerStack(talker, rows, 64, norm).step, x, positions, 16))
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.qwen_ops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--talker-layers", type=int, default=28)
    p.add_argument("--rows", type=int, default=1)
    args = p.parse_args(argv)
    counts = count(args.layers, args.rows, args.talker_layers)
    print(f"Ops dispatched: one frame of the code predictor ({args.layers} layers, sampling), one talker step ({args.talker_layers} layers)")
    print("\n| path | ops | matrix products | the most frequent |\n|---|---:|---:|---|")
    for name, ops in counts.items():
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(6))
        print(f"| {name} | {sum(ops.values())} | {ops['linear'] + ops['matmul'] + ops['mm'] + ops['addmm']} | {top} |")


if __name__ == "__main__":
    main()
