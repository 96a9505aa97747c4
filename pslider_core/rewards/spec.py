"""The reward spec syntax: how a reward and its parameters are written on a command line.

    spec      := name | name "(" params ")" | module.path ":" attr ["(" params ")"] | "remote:" url ["#" spec]
    params    := key "=" value ("," key "=" value)*
    value     := bare text (balanced parentheses allowed) | "double quoted" | 'single quoted'
    list      := spec ("," spec)*        (commas inside parentheses or quotes do not split)

Examples: `clip_style(style=a pencil sketch)`, `clip_style(style="charcoal, smudged")`,
`clip_score(model=/models/clip-vit-large-patch14)`, `mypkg.rewards:Vibes(scale=2)`,
`remote:http://127.0.0.1:8765#pickscore`. Inside quotes a backslash escapes the next character.
`format_spec` writes the canonical form, which `parse_spec` reads back to the same name and parameters.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NEEDS_QUOTES = re.compile(r"""[,()"'\\=]|^\s|\s$|^$""")


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside parentheses and quotes; raises on unbalanced parentheses or quotes."""
    parts, current, depth, quote = [], [], 0, None
    chars = iter(text)
    for ch in chars:
        if quote:
            current.append(ch)
            if ch == "\\":
                current.append(next(chars, ""))
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in reward spec {text!r}")
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quote:
        raise ValueError(f"unterminated {quote} quote in reward spec {text!r}")
    if depth:
        raise ValueError(f"unbalanced '(' in reward spec {text!r}")
    parts.append("".join(current))
    return parts


def parse_reward_list(text: str) -> list[str]:
    """Split a CLI `--rewards` value into specs: `clip_style(style="a, b"),pickscore` -> two specs."""
    specs = [part.strip() for part in split_top_level(text)]
    specs = [spec for spec in specs if spec]
    if not specs:
        raise ValueError(f"no reward in {text!r}; pass names separated by commas, e.g. 'pickscore,clip_score'")
    return specs


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    if value[:1] in "\"'":
        raise ValueError(f"a quoted value must be quoted as a whole, got {value!r}")
    return value


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`name(key=value, ...)` -> (name, {key: raw string value}); the name keeps any `module:attr` colon."""
    spec = spec.strip()
    if "(" not in spec:
        if ")" in spec or not spec:
            raise ValueError(f"malformed reward spec {spec!r}; expected name or name(key=value, ...)")
        return spec, {}
    head, _, rest = spec.partition("(")
    name = head.strip()
    if not name or not rest.endswith(")"):
        raise ValueError(f"malformed reward spec {spec!r}; expected name(key=value, ...) ending with ')'")
    body = rest[:-1]
    items = split_top_level(body)
    params: dict[str, str] = {}
    for item in items if body.strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not _KEY.match(key):
            raise ValueError(f"malformed parameter {item.strip()!r} in reward spec {spec!r}; write key=value")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice in reward spec {spec!r}")
        params[key] = _unquote(value.strip())
    return name, params


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    text = str(value)
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_spec(name: str, params: dict[str, object]) -> str:
    """The canonical spec string (what `reward.name` holds and checkpoints record)."""
    if not params:
        return name
    return f"{name}(" + ", ".join(f"{key}={format_value(value)}" for key, value in params.items()) + ")"


def spec_key(spec: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """A comparison key: two specs naming the same reward with the same parameters (in any order) match."""
    name, params = parse_spec(spec)
    return name, frozenset(params.items())
