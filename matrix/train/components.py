"""The train stage's components, named by `_target_`: the objective (`train.objective`, a
CausalLMModule subclass), the optimizer (`optimizer`, a torch.optim.Optimizer class), the
LR schedule (`scheduler`, a callable returning a scheduler) and more Lightning callbacks
(`train.callbacks.<name>`, lightning.pytorch.Callback classes). Checked before any model loads:
the class imports (a missing package is named with the extra that brings it), is of the
right kind, and takes every option the block sets, each of the type its annotation names
(matrix.common.schema.check: `Literal` choices, numbers, unions). What a constructor gets from the run rather than from its block (the model,
the parameter groups, the step count) is left out of its options."""

from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any

from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf

from matrix.common.schema import check
from matrix.common.validation import ConfigProblems

# Packages some shipped targets need beyond the base install, and the extra that brings them.
EXTRAS = {"bitsandbytes": "quant (CUDA only)"}
# What each component gets from the run, never from its block.
FROM_RUN = {
    "train.objective": {"model", "optimizer", "scheduler", "total_steps", "clip_norm"},
    "optimizer": {"params"},
    "scheduler": {"optimizer", "total_steps"},
}


def load_target(block: Any, key: str, p: ConfigProblems, method: bool = False) -> Any:
    """The class (or, with `method`, the callable) `<key>._target_` names, or None with the
    problem added."""
    if isinstance(block, str):  # `objective=dpo`: a name where a block belongs
        group = key.rpartition(".")[2]
        p.add(
            key,
            f"{block!r} is a name, not a block; choose it with `{group}={block}` (conf/{group}/)",
        )
        return None
    target = block.get("_target_") if isinstance(block, dict | DictConfig) else None
    if not target:
        p.add(f"{key}._target_", "missing; name the component's class, e.g. in conf/")
        return None
    try:
        return get_method(str(target)) if method else get_class(str(target))
    except Exception as e:  # noqa: BLE001 - hydra wraps ImportError and AttributeError alike
        cause = e.__cause__ or e
        missing = getattr(cause, "name", None) or ""
        extra = EXTRAS.get(missing.split(".")[0])
        fix = f"pip install 'matrix[{extra.split()[0]}]' ({extra})" if extra else "check the name"
        p.add(f"{key}._target_", f"cannot import {target}: {cause}; {fix}")
        return None


def check_options(block: Any, target: Any, key: str, p: ConfigProblems) -> None:
    """Every option of `block` is a keyword of `target` (a class's constructor or a function),
    of the type its annotation names."""
    options = (
        OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else block
    )
    params = _parameters(target)
    if params is None:  # takes **kwargs: any option goes
        return
    hints = _hints(target)
    for name, value in options.items():
        if str(name).startswith("_"):
            continue
        if name not in params or name in FROM_RUN.get(key, ()):
            close = difflib.get_close_matches(str(name), sorted(params), n=1, cutoff=0.6)
            hint = f"did you mean `{key}.{close[0]}`?" if close else f"accepted: {sorted(params)}"
            p.add(f"{key}.{name}", f"unknown option of {_name(target)}; {hint}")
            continue
        if name in hints:
            check(value, hints[name], f"{key}.{name}", p)


def build_callbacks(cfg: DictConfig) -> list:
    """The Lightning callbacks `train.callbacks` names (each block built by instantiate)."""
    from hydra.utils import instantiate

    return [
        instantiate(block) for block in (OmegaConf.select(cfg, "train.callbacks") or {}).values()
    ]


def check_components(cfg: DictConfig, p: ConfigProblems) -> None:
    """The objective, optimizer, scheduler and callback blocks (the train stage's preflight)."""
    from lightning.pytorch import Callback
    from torch.optim import Optimizer

    from matrix.train.lm import CausalLMModule

    callbacks = OmegaConf.select(cfg, "train.callbacks") or {}
    for key, kind, method in (
        ("train.objective", CausalLMModule, False),
        ("optimizer", Optimizer, False),
        ("scheduler", None, True),
        *((f"train.callbacks.{name}", Callback, False) for name in callbacks),
    ):
        block = OmegaConf.select(cfg, key)
        target = load_target(block, key, p, method=method)
        if target is None:
            continue
        if kind is not None and not (isinstance(target, type) and issubclass(target, kind)):
            p.add(f"{key}._target_", f"{_name(target)} is not a {kind.__qualname__} subclass")
            continue
        check_options(block, target, key, p)


def _parameters(target: Any) -> set[str] | None:
    """Keyword parameters of `target` and, for a class whose constructor passes **kwargs on
    (`super().__init__(*args, **kwargs)`), of its bases; None when any keyword goes."""
    fns = (
        [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
        if isinstance(target, type)
        else [target]
    )
    names: set[str] = set()
    for fn in fns:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        kinds = {q.kind for q in sig.parameters.values()}
        names |= {
            n for n, q in sig.parameters.items() if q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)
        }
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            return names - {"self"}
    return None


def _hints(target: Any) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    fns = (
        [c.__init__ for c in reversed(target.__mro__) if "__init__" in vars(c)]
        if isinstance(target, type)
        else [target]
    )
    for fn in fns:
        try:
            hints |= typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - unresolvable annotations check nothing
            continue
    return hints


def _name(target: Any) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}"
