"""A rule's text as a list of options: `[!] -x VALUE` / `[!] --name VALUE...`.

The comparison reads values (addresses, ports, interfaces, states) straight
from the rule text as iptables-save prints it, so it does not depend on the
internals of each match class.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Opt:
    name: str  # "-s", "--dport", "-m", "-j" ...
    neg: bool
    values: tuple[str, ...]

    @property
    def value(self) -> str:
        return self.values[0] if self.values else ""


def split_words(text: str) -> list[tuple[str, bool]]:
    """Words of a rule line; the flag says the word was quoted."""
    out: list[tuple[str, bool]] = []
    buf: list[str] = []
    quoted = in_q = esc = False
    for ch in text:
        if in_q:
            if esc:
                buf.append(ch)
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_q = False
            else:
                buf.append(ch)
            continue
        if ch == '"':
            in_q = quoted = True
        elif ch in " \t":
            if buf or quoted:
                out.append(("".join(buf), quoted))
                buf, quoted = [], False
        else:
            buf.append(ch)
    if buf or quoted:
        out.append(("".join(buf), quoted))
    return out


def _is_opt(word: str, quoted: bool) -> bool:
    return not quoted and word.startswith("-") and len(word) > 1 and not word[1].isdigit()


def rule_opts(text: str) -> list[Opt]:
    """`-A CHAIN -s 10.0.0.0/8 ! -p tcp -m tcp --dport 22 -j ACCEPT` -> options in order."""
    words = split_words(text)
    out: list[Opt] = []
    i = 0
    neg = False
    n = len(words)
    while i < n:
        w, q = words[i]
        if w == "!" and not q:
            neg = True
            i += 1
            continue
        if _is_opt(w, q):
            vals: list[str] = []
            j = i + 1
            while j < n and not _is_opt(*words[j]) and not (words[j][0] == "!" and not words[j][1]):
                vals.append(words[j][0])
                j += 1
            # "--opt ! value" (old syntax) negates the option too
            if j < n and words[j] == ("!", False) and not vals and j + 1 < n:
                neg = True
                vals.append(words[j + 1][0])
                j += 2
            out.append(Opt(w, neg, tuple(vals)))
            neg = False
            i = j
            continue
        i += 1
    return out
