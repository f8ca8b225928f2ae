"""The one way the CLI prints JSON: strict JSON (RFC 8259) that every parser reads.

Python's json module writes `Infinity` and `NaN` for non-finite floats, which JSON does not have (jq, JavaScript
and Go refuse them). A non-finite number means "no meaningful value" here (a throughput of a zero-cost step, an
error statistic over no runs), so it is written as null; `allow_nan=False` then guarantees none slipped through.
"""

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float inside dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(doc: Any) -> str:
    """`doc` as indented strict JSON (non-finite floats as null)."""
    return json.dumps(finite_or_none(doc), indent=2, allow_nan=False)
