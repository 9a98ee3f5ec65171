"""What differs between the transformers versions pyproject allows, in one place.

transformers renamed the forward's cache argument from `past_key_values` to `cache` (5.24 takes
both, warning on the old name; 5.17 silently drops `cache`, so a loop passing it would run without
its KV cache). We pass the name the installed model's forward declares.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from transformers import DynamicCache, PreTrainedModel


@cache
def _cache_argument(forward_type: type) -> str:
    parameters = inspect.signature(forward_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def with_cache(model: PreTrainedModel, cache: DynamicCache, **inputs: Any) -> dict[str, Any]:
    """Forward keyword arguments that hand `cache` to `model` under the name its version expects."""
    return {**inputs, _cache_argument(type(model)): cache, "use_cache": True}


def new_dynamic_cache(model: PreTrainedModel) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # versions whose DynamicCache takes no config
        return DynamicCache()
