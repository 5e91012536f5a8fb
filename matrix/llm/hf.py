"""Local transformers backend: batched generation with left padding and the chat template."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from matrix.llm.chat import pre_query_prefix, render, template_tokenizer
from matrix.llm.embedded import resolve_model_path
from matrix.llm.errors import ContextOverflow
from matrix.llm.protocol import Chat, Completion, Sampling, truncate_at_stop

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        # CPUs run float32 fastest and exactly; GPUs bf16 where supported.
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


class HFBackend:
    """Runs a Hugging Face causal LM in this process.

    `model` is a folder (e.g. train.py's hf_model/), a hub id (users with hub access), or
    `embedded:smollm2-135m-instruct`. The model loads once, lazily, on the first call.
    """

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 16,
        chat_template: str | None = None,
        attn_implementation: str = "sdpa",
        overflow: str = "error",  # "error" | "truncate_left"
        max_context: int | None = None,
    ):
        if overflow not in ("error", "truncate_left"):
            raise ValueError(f"llm backend overflow={overflow!r}: use 'error' or 'truncate_left'")
        self.model_spec = model
        self.dtype = dtype
        self.device = pick_device(device)
        self.batch_size = int(batch_size)
        self.chat_template = chat_template
        self.attn_implementation = attn_implementation
        self.overflow = overflow
        self.max_context = max_context
        self._model = None
        self._tok = None

    @property
    def name(self) -> str:
        return self.model_spec

    def load(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM

            path = resolve_model_path(self.model_spec)
            log.info("loading %s on %s", path, self.device)
            tok = template_tokenizer(path, self.chat_template)
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=pick_dtype(self.dtype, self.device),
                attn_implementation=self.attn_implementation,
            )
            model.to(self.device).eval()
            self._tok, self._model = tok, model
        return self._model, self._tok

    @property
    def tokenizer(self):
        return self.load()[1]

    def _context_limit(self, model) -> int:
        return int(self.max_context or getattr(model.config, "max_position_embeddings", 2048))

    def generate(self, chats: Sequence[Chat], sampling: Sampling) -> list[Completion]:
        if not chats:
            return []
        _, tok = self.load()
        prompts = [render(tok, c, add_generation_prompt=True) for c in chats]
        return self.complete(prompts, sampling)

    def pre_query_prefix(self) -> str:
        """The chat template up to where a user's words begin (Magpie's pre-query prefix)."""
        return pre_query_prefix(self.tokenizer, self.name)

    @torch.inference_mode()
    def complete(self, prompts: Sequence[str], sampling: Sampling) -> list[Completion]:
        """Continue raw text prompts (no chat template): the path Magpie-style sampling needs."""
        if not prompts:
            return []
        model, tok = self.load()
        encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        limit = self._context_limit(model) - sampling.max_new_tokens
        for i, ids in enumerate(encoded):
            if len(ids) > limit:
                if self.overflow == "error":
                    raise ContextOverflow(
                        f"row {i}: prompt of {len(ids)} tokens + max_new_tokens "
                        f"{sampling.max_new_tokens} exceeds the context of {self.name} "
                        f"({self._context_limit(model)}); shorten the prompt, lower "
                        "max_new_tokens, or set the backend's overflow=truncate_left",
                        row=i,
                    )
                encoded[i] = ids[len(ids) - limit :]
        # Longest first: batches of similar length waste little on padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        out: list[Completion | None] = [None] * len(prompts)
        eos_ids = {tok.eos_token_id, tok.pad_token_id} - {None}
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            kwargs = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id)
            if sampling.logprobs > 0:
                kwargs.update(output_logits=True, return_dict_in_generate=True)
            if sampling.greedy:
                kwargs.update(do_sample=False)
            else:
                torch.manual_seed(sampling.seed + b)
                kwargs.update(
                    do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p
                )
            gen = model.generate(**batch, **kwargs)
            top: list[list[dict[str, float]]] = [[] for _ in idx]
            if sampling.logprobs > 0:
                top = _top_logprobs(gen.logits, tok, sampling.logprobs)
                gen = gen.sequences
            new = gen[:, batch["input_ids"].shape[1] :].tolist()
            for row, i, alts in zip(new, idx, top, strict=True):
                out[i] = self._decode(tok, row, eos_ids, sampling, len(encoded[i]), alts)
        return out  # type: ignore[return-value]

    def _decode(
        self,
        tok,
        row: list[int],
        eos_ids: set[int],
        sampling: Sampling,
        prompt_tokens: int,
        alts: list[dict[str, float]],
    ) -> Completion:
        """One generated row (padded past its end) as a Completion: cut at the first end
        token, then at the first stop string; the end token counts as generated."""
        n = len(row)
        for j, t in enumerate(row):
            if t in eos_ids:
                n = j
                break
        text = tok.decode(row[:n], skip_special_tokens=True)
        text, stopped = truncate_at_stop(text, sampling.stop)
        hit_eos = n < len(row)
        return Completion(
            text=text.strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=min(n + int(hit_eos), len(row)),
            finish_reason="stop" if (hit_eos or stopped) else "length",
            model=self.name,
            top_logprobs=tuple(alts[: min(n + int(hit_eos), len(row))]),
        )


def _top_logprobs(logits: Sequence[torch.Tensor], tok, k: int) -> list[list[dict[str, float]]]:
    """Per row and generated position, the k most likely next tokens under the model's raw
    logits (before sampling processors), as {decoded token: log-probability}."""
    rows: list[list[dict[str, float]]] = [[] for _ in range(logits[0].shape[0])]
    for step in logits:
        lp = torch.log_softmax(step.float(), dim=-1)
        values, ids = lp.topk(k, dim=-1)
        for r in range(lp.shape[0]):
            alts: dict[str, float] = {}
            for v, t in zip(values[r].tolist(), ids[r].tolist(), strict=True):
                alts.setdefault(tok.decode([t]), v)  # two ids can decode alike: keep the likelier
            rows[r].append(alts)
    return rows
