"""The other sections of params: scales (a model size and a token budget each), other optimizers' studies, the
search and the analysis."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .study import Strict


class Scale(Strict):
    """A (model size, token budget) setting. Derived values are properties, never typed in."""

    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    ffn_width: int | None = Field(None, gt=0, description="default 4 * width, as in the original study")
    seq_len: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="sequences per optimizer step")
    tokens: int = Field(gt=0, description="training token budget")
    micro_batch_size: int | None = Field(
        None, gt=0, description="sequences per forward/backward pass at this scale (default: study.train's)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Scale:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if (self.width // self.heads) % 2:
            raise ValueError(f"head dim width/heads ({self.width // self.heads}) must be even for RoPE")
        if self.tokens < self.seq_len * self.batch_size:
            raise ValueError(
                f"tokens ({self.tokens}) must cover at least one step of batch_size * seq_len "
                f"({self.batch_size * self.seq_len})"
            )
        return self

    @property
    def ffn(self) -> int:
        return self.ffn_width or 4 * self.width

    @property
    def n_params(self) -> int:
        """Non-embedding parameters: attention (4 d^2) and SwiGLU MLP (3 d ff) per layer, plus RMSNorms."""
        return self.depth * (4 * self.width**2 + 3 * self.width * self.ffn + 2 * self.width) + self.width

    def steps(self, batch_size: int | None = None) -> int:
        """Optimizer steps that spend the token budget (the last partial step is dropped)."""
        return self.tokens // ((batch_size or self.batch_size) * self.seq_len)

    def flops_per_token(self, vocab_size: int) -> int:
        """Training FLOPs per token: 6 x matmul params (incl. the output head) + causal attention (PaLM)."""
        matmul = self.depth * (4 * self.width**2 + 3 * self.width * self.ffn) + self.width * vocab_size
        return 6 * matmul + 12 * self.depth * self.width * self.seq_len

    def derived(self, vocab_size: int, batch_size: int | None = None) -> dict[str, Any]:
        """The scale as a run spec carries it: declared fields plus every derived value."""
        batch = batch_size or self.batch_size
        steps = self.steps(batch)
        return {
            **self.model_dump(exclude={"micro_batch_size"}),  # a layout setting: it travels in spec["train"]
            "ffn_width": self.ffn,
            "batch_size": batch,
            "vocab_size": vocab_size,
            "n_params": self.n_params,
            "steps": steps,
            "tokens": steps * batch * self.seq_len,
            "flops_per_token": self.flops_per_token(vocab_size),
        }


Hparams = dict[str, float | int]  # one configuration: a value per hyperparameter of the optimizer


class OptimizerStudy(Strict):
    """Another optimizer, tuned by the same coordinate descent at the same scales as the study's own and
    compared with it (the speedup over the tuned AdamW). `StudyParams.for_optimizer` makes its study."""

    optimizer: str | None = Field(None, description="built-in name or 'module:function' (default: the key)")
    baseline: dict[str, float | int] = Field(description="start values (the rest: the optimizer's defaults)")
    grid: dict[str, list[float]]
    order: list[str] | None = Field(None, description="coordinate order (default: as for the study's optimizer)")
    free: list[str] | None = Field(None, description="hyperparameters the search may move (default: all)")


class SearchSettings(Strict):
    """Coordinate descent: which hyperparameters move, in which order, and when to stop."""

    passes: int = Field(3, ge=1, description="upper bound on full passes over the free hyperparameters")
    order: list[str] | None = Field(None, description="coordinate order (default: the grid's order)")
    free: list[str] | None = Field(None, description="hyperparameters the search may move (default: all)")
    tolerance: float = Field(3e-3, ge=0, description="a challenger must beat the incumbent by more")
    tolerance_kind: Literal["absolute", "relative"] = "absolute"
    stop_rule: Literal["pass", "neighbourhood"] = "pass"
    speculate: int = Field(
        0, ge=0, description="lines ahead trained on idle workers of a phase's pool (0 = none; may waste runs)"
    )
    extend_edges: int = Field(
        2, ge=0, description="values a grid may grow by at each end when the optimum lands on its edge (0 = off)"
    )
    noise_seeds: int = Field(
        2, ge=0, description="extra seeds for the best config and its competitors: the noise the verdicts need"
    )
    noise_candidates: int = Field(2, ge=0, description="nearest competitors re-evaluated on noise seeds")
    noise_varies: Literal["both", "init", "data_order"] = Field(
        "both", description="what the noise seeds change: the initialisation, the batch order, or both"
    )


TOKENS_PER_PARAM = 20  # Chinchilla-optimal data: 1x Chinchilla is 20 tokens per (non-embedding) parameter


class SpeedupTarget(Strict):
    """A model size and data budget at which the speedup laws predict each optimizer's speedup."""

    n_params: float = Field(gt=0, description="non-embedding parameters")
    chinchilla: float = Field(gt=0, description="data as a multiple of Chinchilla's 20 tokens per parameter")

    @property
    def tokens(self) -> float:
        return TOKENS_PER_PARAM * self.chinchilla * self.n_params


DEFAULT_SPEEDUP_TARGETS = (SpeedupTarget(n_params=7e9, chinchilla=1), SpeedupTarget(n_params=7e9, chinchilla=8))


class AnalysisSettings(Strict):
    """Sensitivity decisions: how much loss counts as mattering."""

    threshold: float = Field(0.0025, gt=0, description="loss a hyperparameter must cost to matter")
    threshold_kind: Literal["absolute", "relative"] = "relative"
    noise: float | None = Field(
        None, gt=0, description="the known run-to-run std of one config's loss (decides over seeds and differences)"
    )
    noise_kind: Literal["absolute", "relative"] = Field(
        "absolute", description="noise in loss units, or as a fraction of each scale's best loss"
    )
    divergence_rise: float = Field(
        0.5, gt=0, description="a finite loss this much (relative) above its scale's best is counted as diverged"
    )
    significance: float = Field(
        0.05, gt=0, lt=1, description="family-wise error of the sensitive verdicts (Holm over hyperparameters)"
    )
    laws_for: list[str] = Field(
        default_factory=list, description="hyperparameters to fit a law for even when they are not sensitive"
    )
    speedup_targets: list[SpeedupTarget] = Field(
        default_factory=lambda: list(DEFAULT_SPEEDUP_TARGETS),
        description="sizes and data budgets where the speedup-against-size laws predict (default 7B at 1x and 8x)",
    )
    speedup_noise: float | None = Field(
        None, gt=0, description="the loss std of one run behind every speedup interval, in loss units "
        "(default: each optimizer's measured noise, at least speedup_noise_floor)",
    )
    speedup_noise_floor: float = Field(
        3e-3, gt=0, description="the least loss noise of one run the speedup intervals assume when it is measured",
    )

    def speedup_options(self, relative_noise: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of `compute_speedup` / `speedup_from_sweeps` these settings decide, with the
        noise each optimizer's own analysis measured (`relative_noise`) passed along."""
        return {"noise_floor": self.speedup_noise_floor, "stated_noise": self.speedup_noise,
                "targets": list(self.speedup_targets), "relative_noise": relative_noise}
