"""Side-by-side comparison of two bench summaries (``spikereveal bench compare A.json B.json``).

Works on any of the bench JSON layouts (kernels, engines, a pipeline report, a ``bench all`` summary)
because it compares leaves, not layouts: every numeric leaf is a row named by its dotted path
(``rsb.ort.window_ms_p50``, ``stages.inference.p99_ms``; list items as ``[i]``), with the ratio B / A.
Which side is better is inferred from the name: rates (``*per_s*``, ``speedup``, ``real_time_factor``)
are better higher; durations (a word ``ms``, ``us``, ``ns`` or ``seconds`` in the name, as in ``p99_ms``
or ``window_ms_p50``) and ``cv`` are better lower; other numbers (counts, geometry) get no verdict.
Text leaves that differ (CPU, GPU, versions) are listed so the machines can be told apart.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping

from spikereveal.errors import ConfigError, FormatError

HIGHER_IS_BETTER = ("per_s", "speedup", "real_time_factor")
LOWER_IS_BETTER_TOKENS = frozenset({"ms", "us", "ns", "seconds", "cv"})  # words of the name, split at "_"
SAME_TOLERANCE = 1e-9


def load_summary(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(path, "no such file (write one with `spikereveal bench ... --json PATH`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from None
    if not isinstance(data, dict):
        raise FormatError(path, "a bench summary must be a JSON object")
    return data


def flatten(data, prefix: str = "") -> dict[str, object]:
    """Leaves of nested dicts/lists by dotted path (dict order kept)."""
    leaves: dict[str, object] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            leaves.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            leaves.update(flatten(value, f"{prefix}[{index}]"))
    else:
        leaves[prefix] = data
    return leaves


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def better_direction(key: str) -> int:
    """+1 when a larger value is better, -1 when smaller is better, 0 when the name does not say."""
    name = key.rsplit(".", 1)[-1]
    if any(marker in name for marker in HIGHER_IS_BETTER):
        return 1
    if LOWER_IS_BETTER_TOKENS.intersection(name.split("_")):
        return -1
    return 0


def compare_summaries(a: Mapping, b: Mapping, *, pattern: str | None = None) -> dict:
    """Rows ``{"key", "a", "b", "ratio" (b / a), "better" ("a", "b", "same" or None)}`` for every numeric
    leaf present in either summary (keys matching the regular expression ``pattern`` only, if given), plus
    ``only_in_a``/``only_in_b`` key lists and ``text_differences`` (``{"key", "a", "b"}``)."""
    try:
        matcher = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise ConfigError(f"--filter is not a valid regular expression ({exc}): {pattern!r}") from None
    flat_a, flat_b = flatten(a), flatten(b)
    keys = list(flat_a) + [key for key in flat_b if key not in flat_a]
    if matcher is not None:
        keys = [key for key in keys if matcher.search(key)]
    rows, text_differences = [], []
    for key in keys:
        value_a, value_b = flat_a.get(key), flat_b.get(key)
        if _is_number(value_a) or _is_number(value_b):
            value_a = value_a if _is_number(value_a) else None
            value_b = value_b if _is_number(value_b) else None
            ratio = value_b / value_a if value_a is not None and value_b is not None and value_a != 0 else None
            better = None
            if value_a is not None and value_b is not None:
                if math.isclose(value_a, value_b, rel_tol=SAME_TOLERANCE, abs_tol=0.0):
                    better = "same"
                elif direction := better_direction(key):
                    better = "b" if (value_b - value_a) * direction > 0 else "a"
            rows.append({"key": key, "a": value_a, "b": value_b, "ratio": ratio, "better": better})
        elif isinstance(value_a, str) or isinstance(value_b, str):
            if value_a != value_b:
                text_differences.append({"key": key, "a": value_a, "b": value_b})
    return {
        "rows": rows,
        "only_in_a": [row["key"] for row in rows if row["b"] is None],
        "only_in_b": [row["key"] for row in rows if row["a"] is None],
        "text_differences": text_differences,
    }


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if abs(value) < 1e3 else f"{value:,.0f}"


def _verdict(better, names: tuple[str, str]) -> str:
    return {"a": names[0], "b": names[1], "same": "same"}.get(better, "")


def format_compare_table(result: Mapping, names: tuple[str, str] = ("A", "B")) -> str:
    rows = result["rows"]
    width = max([len("metric")] + [len(row["key"]) for row in rows])
    column = max(12, len(names[0]) + 2, len(names[1]) + 2)
    lines = [f"{'metric':<{width}}{names[0]:>{column}}{names[1]:>{column}}{'B/A':>9}  better"]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        lines.append(f"{row['key']:<{width}}{_number(row['a']):>{column}}{_number(row['b']):>{column}}{ratio:>9}  "
                     f"{_verdict(row['better'], names)}")
    for difference in result["text_differences"]:
        lines.append(f"{difference['key']}: {names[0]}={difference['a']!r}  {names[1]}={difference['b']!r}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def format_compare_markdown(result: Mapping, names: tuple[str, str] = ("A", "B")) -> str:
    lines = [f"| metric | {_cell(names[0])} | {_cell(names[1])} | B/A | better |", "|---|---:|---:|---:|---|"]
    for row in result["rows"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        lines.append(f"| `{_cell(row['key'])}` | {_number(row['a'])} | {_number(row['b'])} | {ratio} | "
                     f"{_cell(_verdict(row['better'], names))} |")
    if result["text_differences"]:
        lines += ["", f"| differs | {_cell(names[0])} | {_cell(names[1])} |", "|---|---|---|"]
        for difference in result["text_differences"]:
            lines.append(f"| `{_cell(difference['key'])}` | {_cell(difference['a'])} | {_cell(difference['b'])} |")
    return "\n".join(lines) + "\n"
