"""Attention is SDPA with `is_causal=True` and no mask, in eager and in compiled mode (issue: flash under compile)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo import lookup_backend
from torch.overrides import TorchFunctionMode

from optsweep.params.sections import Scale
from optsweep.train.model import build_hf_model, build_model

SCALE = Scale(width=32, depth=2, heads=2, seq_len=16, batch_size=2, tokens=64).derived(vocab_size=100)


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, (2, SCALE["seq_len"] + 1), generator=torch.Generator().manual_seed(seed))


class SdpaCalls(TorchFunctionMode):
    """Records (has a mask, is_causal) of every eager SDPA call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
            self.calls.append((mask is not None, bool(kwargs.get("is_causal", False))))
        return func(*args, **kwargs)


class GraphRecorder:
    """A torch.compile backend: records the SDPA calls of each FX graph Dynamo hands it, then runs aot_eager."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool]] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        for node in graph.graph.nodes:
            if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
                self.calls.append((mask is not None, bool(node.kwargs.get("is_causal", False))))
        return lookup_backend("aot_eager")(graph, example_inputs)


def compiled(model: torch.nn.Module) -> GraphRecorder:
    torch._dynamo.reset()
    recorder = GraphRecorder()
    model.compile(backend=recorder, dynamic=False)
    return recorder


def test_eager_model_calls_sdpa_causally_without_a_mask():
    model, batch = build_model(SCALE, seed=0), tokens()
    with SdpaCalls() as sdpa:
        model(batch[:, :-1], targets=batch[:, 1:]).backward()
    assert sdpa.calls == [(False, True)] * SCALE["depth"]


def test_compiled_model_calls_sdpa_causally_without_a_mask():
    model, batch = build_model(SCALE, seed=0), tokens()
    recorder = compiled(model)
    model(batch[:, :-1], targets=batch[:, 1:]).backward()
    assert recorder.calls == [(False, True)] * SCALE["depth"]


def test_the_graph_check_sees_the_mask_stock_sdpa_builds_under_compile():
    """The failure this guards against: stock `sdpa` passes a mask once compiled (transformers 5.23, torch 2.13)."""
    model, batch = build_hf_model(SCALE, seed=0), tokens()
    recorder = compiled(model)
    model(input_ids=batch[:, :-1]).logits.sum().backward()
    assert recorder.calls == [(True, False)] * SCALE["depth"]


def test_compiled_loss_and_gradients_equal_eager():
    eager, batch = build_model(SCALE, seed=0), tokens()
    loss = eager(batch[:, :-1], targets=batch[:, 1:])
    loss.backward()
    model = build_model(SCALE, seed=0)
    compiled(model)
    compiled_loss = model(batch[:, :-1], targets=batch[:, 1:])
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, loss, rtol=0, atol=1e-6)
    for (name, param), reference in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(param.grad, reference.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_logits_equal_stock_sdpa():
    """Without targets the forward is the stock one and, with causal attention, computes the same logits."""
    batch = tokens()[:, :-1]
    ours = build_model(SCALE, seed=0)(input_ids=batch).logits
    stock = build_hf_model(SCALE, seed=0)(input_ids=batch).logits
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_a_padding_mask_is_refused():
    batch = tokens()[:, :-1]
    with pytest.raises(ValueError, match="takes no attention_mask"):
        build_model(SCALE, seed=0)(input_ids=batch, attention_mask=torch.ones_like(batch))
