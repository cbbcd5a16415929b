"""How many ops one frame of the code predictor dispatches: upstream's modules vs the folded predictor.

    python -m bench.qwen_ops [--layers 5] [--rows 1]

Counts every ATen op that does work (views excluded) in one call of each
predictor on a tiny random-weight model with the real depth (5 layers) and
sampling on: a proxy, independent of the machine, for the kernels a frame
launches on a GPU, where the code predictor is bound by their number, not
their size (issue 16).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
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


def count(layers: int, rows: int) -> dict[str, collections.Counter[str]]:
    from server.engines.qwen import compat
    from server.engines.qwen.batch import PREDICTORS
    from server.engines.qwen.sampling import Settings

    compat.install()
    import qwen_tts  # type: ignore[import-untyped]

    size = dataclasses.replace(qwen_models.SIZES["tiny"], name=f"tiny-{layers}", predictor=qwen_models._transformer(32, 64, layers, 2, 1, 16))
    qwen_models.SIZES[size.name] = size
    _, base = qwen_models.build_models(tempfile.mkdtemp(), size.name, device="cpu")
    talker = qwen_tts.Qwen3TTSModel.from_pretrained(str(base), dtype=torch.float32).model.talker
    vocab = talker.code_predictor.config.vocab_size
    settings = Settings.allocate(rows, vocab, torch.device("cpu"))
    for row in range(rows):
        settings.assign(row, {"do_sample": True, "top_k": 50, "temperature": 0.9}, vocab)
    args = (torch.randn(rows, 1, talker.config.hidden_size), torch.zeros(rows, dtype=torch.long), settings,
            torch.empty(rows, talker.config.num_code_groups - 1, vocab).exponential_())  # fmt: skip
    counts = {}
    for name, make in PREDICTORS.items():
        predictor = make(talker, rows, top_p=False)
        with torch.inference_mode():
            predictor(*args)
            counter = OpCount()
            with counter:
                predictor(*args)
        counts[name] = counter.ops
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.qwen_ops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--rows", type=int, default=1)
    args = p.parse_args(argv)
    counts = count(args.layers, args.rows)
    print(f"One frame of the code predictor ({args.layers} layers, {args.rows} rows, sampling): ops dispatched")
    print("\n| predictor | ops | matrix products | the most frequent |\n|---|---:|---:|---|")
    for name, ops in counts.items():
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(6))
        print(f"| {name} | {sum(ops.values())} | {ops['linear'] + ops['matmul'] + ops['mm'] + ops['addmm']} | {top} |")


if __name__ == "__main__":
    main()
