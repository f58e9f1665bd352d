"""Widgets of the trace debugger.  Imported only by `nftrace tui` (textual is a heavy import).

`RulesView` is a virtualised table (textual's Line API): it renders only the
rows on screen, from the chain's rules and the branch model, so a step costs
the same in a 5-rule chain and in a 100,000-rule one.  Stepping changes which
row is current and which rows have been evaluated: nothing is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.content import Content
from textual.css.styles import RulesMap
from textual.events import Click, Resize
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from nftrace.ruleset.model import Chain
from nftrace.tui.model import BranchModel, PacketState, Position, Visit, result_words

STATUS_W = 10  # width of the status column
WHY_MIN_WIDTH = 110  # the view is this wide or wider: show a "why not" column
WHY_W = 44


@dataclass(slots=True)
class RowInfo:
    """What one row of the rules view says, for the detail line and the tests."""

    row: int
    kind: str  # head | rule | tail
    status: str  # the status column
    state: str  # match | miss | pending | dim | head
    text: str  # rule text (without "-A CHAIN ")
    why: str  # why it did not match / what it did / when it runs
    position: int | None  # the trace position that evaluated it


class ChainRows:
    """The rows of one chain (head, its rules, tail) seen at one position of a branch.

    Row 0 is the chain's head (its entry), rows 1..N are rules by position (as
    `iptables -L --line-numbers` counts them), row N+1 is the policy (built-in
    chain) or the end-of-chain return (user chain).
    """

    def __init__(self, table: str, chain: Chain, visit: Visit | None, branch: BranchModel) -> None:
        self.table = table
        self.chain = chain
        self.name = chain.name
        self.visit = visit
        self.branch = branch
        self.position = 0
        self.count = len(chain.rules) + 2
        self._prefix = len(f"-A {chain.name} ")

    def text(self, row: int) -> str:
        if row == 0:
            return self.head_text()
        if row == self.count - 1:
            return self.tail_text()
        t = self.chain.rules[row - 1].text
        return t[self._prefix :] if t.startswith(f"-A {self.name} ") else t

    def head_text(self) -> str:
        v = self.visit
        if self.chain.builtin:
            return f"-> {self.table} {self.name}  (built-in chain, policy {self.chain.policy})"
        frm = f"  (jumped to from {v.caller[0]} #{v.caller[1]})" if v is not None and v.caller else ""
        return f"-> {self.table} {self.name}{frm}"

    def tail_text(self) -> str:
        if self.chain.builtin:
            return f"policy {self.chain.policy}"
        return "end of chain: return to the caller"

    def info(self, row: int) -> RowInfo:
        kind = "head" if row == 0 else "tail" if row == self.count - 1 else "rule"
        text = self.text(row)
        if kind == "head":
            return RowInfo(row, kind, "", "head", text, "", self.visit.entry if self.visit else None)
        v = self.visit
        q = None
        if v is not None:
            q = v.tail if kind == "tail" else v.rows.get(row)
        if q is None:
            where = "not reached in this pass" if v is not None else "not traversed by this branch"
            return RowInfo(row, kind, "", "dim", text, where, None)
        if q > self.position:
            return RowInfo(row, kind, ".", "pending", text, f"evaluated at step {q}", q)
        step = self.branch.positions[q].step or {}
        if kind == "tail":
            if step.get("kind") == "policy":
                return RowInfo(row, kind, f"\u2713 {step.get('verdict')}", "match", text, "policy applied", q)
            return RowInfo(row, kind, "\u2713 return", "match", text, "fell off the end of the chain", q)
        if step.get("matched") is False:
            return RowInfo(row, kind, "\u2717 no", "miss", text, f"no: {step.get('why', '')}", q)
        verdict = str(step.get("verdict") or "")
        target = step.get("target")
        word = verdict
        if target and verdict in ("CONTINUE", "ACCEPT", "DROP", "QUEUE") and target != verdict:
            word = str(target)
        elif verdict == "CONTINUE":
            word = "CONT"
        why = f"{verdict} {target}" if verdict in ("JUMP", "GOTO") else verdict
        if step.get("note"):
            why += f"; {step['note']}"
        pending = self.branch.positions[q].pending_nat
        if pending:
            why += f"; {target} {pending} when the nat table ends"
        if step.get("unknown"):
            why += f"; unknown: {step['unknown']}"
        svc, ep = step.get("service"), step.get("endpoint")
        if ep and str(ep) in why:
            ep = None
        if svc or ep:
            why += "; " + " -> ".join(str(x) for x in (svc, ep) if x)
        return RowInfo(row, kind, f"\u2713 {word}", "match", text, why, q)

    def row_of(self, pos: Position) -> int | None:
        """The row of the rule (or tail) this position evaluates, if it is in this chain's visit."""
        if self.visit is None or pos.visit != self.visit.id:
            return None
        if pos.kind == "rule" and pos.step is not None:
            return int(pos.step.get("rule") or 0)
        if pos.kind in ("policy", "return"):
            return self.count - 1
        return None


class RulesView(ScrollView, can_focus=True):
    """A chain's rules, one per line, with the trace's verdict on each."""

    COMPONENT_CLASSES = {
        "rules--current",
        "rules--cursor",
        "rules--match",
        "rules--miss",
        "rules--pending",
        "rules--dim",
        "rules--bp",
        "rules--found",
        "rules--head",
        "rules--lineno",
    }
    DEFAULT_CSS = """
    RulesView { background: $surface; color: $foreground; }
    RulesView > .rules--current { background: $accent 40%; text-style: bold; }
    RulesView > .rules--cursor { background: $primary 30%; }
    RulesView > .rules--match { color: $success; text-style: bold; }
    RulesView > .rules--miss { color: $error; }
    RulesView > .rules--pending { color: $foreground; }
    RulesView > .rules--dim { color: $foreground 40%; }
    RulesView > .rules--bp { color: $error; text-style: bold; }
    RulesView > .rules--found { background: $warning 60%; color: $foreground; }
    RulesView > .rules--head { color: $secondary; text-style: italic; }
    RulesView > .rules--lineno { color: $foreground 60%; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "edge(0)", "first", show=False),
        Binding("end", "edge(1)", "last", show=False),
        Binding("left", "hscroll(-8)", "left", show=False),
        Binding("right", "hscroll(8)", "right", show=False),
        Binding("enter", "activate", "go to this rule's step", show=False),
    ]

    class CursorMoved(Message):
        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    class Activated(Message):
        """Enter, or a click on the row that already has the cursor."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: ChainRows | None = None
        self.cursor = 0
        self.current: int | None = None
        self.bp_rows: set[int] = set()
        self.bp_chain = False
        self.search_text = ""  # lowercase; its occurrences are highlighted
        self._max_text: dict[int, int] = {}  # id(chain) -> longest rule text, computed once per chain
        self._want_visible: tuple[int, bool] | None = None
        self._styles: dict[str, Style] = {}  # component styles, until the theme/CSS changes

    # ------------------------------------------------------------------ data
    def show(self, rows: ChainRows, current: int | None, *, follow: bool = True) -> None:
        """Show `rows` (a chain at a position); move the cursor to `current` when following."""
        same = self.rows is not None and self.rows.chain is rows.chain
        self.rows = rows
        self.current = current
        if not same:
            key = id(rows.chain)
            if key not in self._max_text:
                # len, not cell_len: 10x faster on 100k rules; only the horizontal scroll range depends on it
                longest = max((len(r.text) for r in rows.chain.rules), default=0)
                self._max_text[key] = max(longest, cell_len(rows.head_text()), cell_len(rows.tail_text()))
            self.virtual_size = Size(self._fixed_width() + self._max_text[key], rows.count)
            self.scroll_to(x=0, animate=False, immediate=True)
            self.cursor = current if current is not None else (1 if rows.count > 2 else 0)
            self._scroll_visible(self.cursor, center=True)
        elif follow and current is not None:
            self.cursor = current
            self._scroll_visible(current, center=False)
        self.refresh()

    def clear(self) -> None:
        self.rows = None
        self.current = None
        self.virtual_size = Size(0, 0)
        self.refresh()

    def set_cursor(self, row: int, center: bool = False) -> None:
        if self.rows is None:
            return
        row = max(0, min(row, self.rows.count - 1))
        if row != self.cursor:
            self.cursor = row
            self.post_message(self.CursorMoved(row))
        self._scroll_visible(row, center=center)
        self.refresh()

    def reveal(self, start: int, end: int) -> None:
        """Scroll horizontally so that columns start..end of the rule text are visible."""
        text_w = self.scrollable_content_region.width - self._fixed_width()
        if text_w <= 0:
            return
        x = round(self.scroll_x)
        if start < x:
            x = max(0, start - 4)
        elif end > x + text_w:
            x = min(start - 4, end - text_w + 4)
        self.scroll_to(x=max(0, x), animate=False, immediate=True)

    def info(self, row: int | None = None) -> RowInfo | None:
        if self.rows is None:
            return None
        return self.rows.info(self.cursor if row is None else row)

    def _fixed_width(self) -> int:
        n = len(self.rows.chain.rules) if self.rows is not None else 0
        w = 2 + max(2, len(str(n))) + 1 + STATUS_W
        if self.size.width >= WHY_MIN_WIDTH:
            w += WHY_W + 1
        return w

    def _scroll_visible(self, row: int, center: bool) -> None:
        h = self.scrollable_content_region.height
        if h <= 0:
            self._want_visible = (row, center)
            return
        top = round(self.scroll_y)
        if top <= row < top + h:
            return
        if center:
            y = max(0, row - h // 2)
        else:
            y = row if row < top else row - h + 1
        self.scroll_to(y=y, animate=False, immediate=True)

    def on_resize(self, event: Resize) -> None:
        if self.rows is not None:
            self.virtual_size = Size(self._fixed_width() + self._max_text.get(id(self.rows.chain), 0), self.rows.count)
        want = self._want_visible or (self.cursor, True)
        self._want_visible = None
        self.call_after_refresh(self._scroll_visible, *want)

    # ------------------------------------------------------------------ actions
    def action_cursor(self, delta: int) -> None:
        self.set_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        h = max(1, self.scrollable_content_region.height - 1)
        self.set_cursor(self.cursor + direction * h)

    def action_edge(self, end: int) -> None:
        if self.rows is not None:
            self.set_cursor(self.rows.count - 1 if end else 0)

    def action_hscroll(self, delta: int) -> None:
        self.scroll_to(x=self.scroll_x + delta, animate=False, immediate=True)

    def action_activate(self) -> None:
        self.post_message(self.Activated(self.cursor))

    def on_click(self, event: Click) -> None:
        off = event.get_content_offset(self)
        if off is None or self.rows is None:
            return
        row = round(self.scroll_y) + off.y
        if not 0 <= row < self.rows.count:
            return
        if row == self.cursor or event.chain > 1:
            self.post_message(self.Activated(row))
        else:
            self.set_cursor(row)

    # ------------------------------------------------------------------ rendering
    def _style(self, name: str) -> Style:
        """A component style, its colours blended over the widget's background (CSS alpha, e.g. `$accent 45%`);
        text styles lose the background so that the row's background (current, cursor) shows through."""
        style = self._styles.get(name)
        if style is None:
            full = self.get_component_rich_style(name)
            if name not in ("rules--current", "rules--cursor", "rules--found"):
                full = Style(color=full.color, bold=full.bold, italic=full.italic, underline=full.underline)
            style = self._styles[name] = full
        return style

    def notify_style_update(self) -> None:
        self._styles.clear()
        super().notify_style_update()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        rows = self.rows
        row = scroll_y + y
        if rows is None or row >= rows.count:
            return Strip.blank(width, base)
        info = rows.info(row)
        n = len(rows.chain.rules)
        pw = max(2, len(str(n)))
        if row == self.current:
            row_style = base + self._style("rules--current")
        elif row == self.cursor:
            row_style = base + self._style("rules--cursor")
        else:
            row_style = base
        bp = (info.kind == "rule" and row in self.bp_rows) or (info.kind == "head" and self.bp_chain)
        marker = "\u25b6" if row == self.current else ("\u203a" if row == self.cursor else " ")
        lineno = str(row) if info.kind == "rule" else ""
        state_style = self._style(f"rules--{info.state}") if info.state != "pending" else Style()
        text_style = self._style("rules--dim") if info.state == "dim" else Style()
        if info.kind == "head":
            text_style = self._style("rules--head")
        segs = [
            Segment("\u25cf" if bp else " ", self._style("rules--bp")),
            Segment(marker),
            Segment(f"{lineno:>{pw}} ", self._style("rules--lineno")),
            Segment(f"{info.status:<{STATUS_W}}"[:STATUS_W], state_style),
        ]
        fixed = 2 + pw + 1 + STATUS_W
        if self.size.width >= WHY_MIN_WIDTH:
            why = info.why if info.state in ("miss", "match") else ""
            why = why[: WHY_W - 1] + "\u2026" if cell_len(why) > WHY_W else why
            segs.append(Segment(f"{why:<{WHY_W}} ", state_style if info.state == "miss" else text_style))
            fixed += WHY_W + 1
        text_w = max(0, width - fixed)
        text = info.text
        text_segs = [Segment(text, text_style)]
        q = self.search_text
        if q and info.kind == "rule":
            low = text.lower()
            at = low.find(q)
            if at >= 0:
                found = text_style + self._style("rules--found")
                text_segs = []
                start = 0
                while at >= 0:
                    text_segs.append(Segment(text[start:at], text_style))
                    text_segs.append(Segment(text[at : at + len(q)], found))
                    start = at + len(q)
                    at = low.find(q, start)
                text_segs.append(Segment(text[start:], text_style))
        body = Strip(text_segs).crop_extend(scroll_x, scroll_x + text_w, None)
        line = Strip.join([Strip(segs), body])
        return line.apply_style(row_style).crop_extend(0, width, row_style)


class HookPath(Static):
    """The hook pipeline of the branch, current segment highlighted; segments are clickable."""

    DEFAULT_CSS = """
    HookPath { height: auto; max-height: 2; padding: 0 1; background: $panel; }
    """

    def show(self, branch: BranchModel, pos: int) -> None:
        cur = branch.positions[pos].segment
        parts: list[Content | tuple[str, str] | str] = []
        for i, seg in enumerate(branch.segments):
            if i:
                parts.append((" \u203a ", "$foreground 50%"))
            label = seg.label
            if label == "result":
                label = result_words(branch.result).split(" at ")[0]
                verdict = str(branch.result.get("verdict", ""))
                style = "$success" if verdict == "ACCEPT" else "$error" if verdict == "DROP" else "$warning"
            else:
                style = "$foreground" if i <= cur else "$foreground 60%"
            if i == cur:
                style = "bold reverse $accent"
            parts.append((label, f"{style} @click=screen.goto_segment({i})"))
        _update(self, Content.assemble(*parts))


class PacketPanel(Static):
    """The packet after the current step; what the step changed is highlighted."""

    DEFAULT_CSS = """
    PacketPanel { height: auto; border: round $primary; border-title-color: $primary; padding: 0 1; }
    """

    LAYOUT = (
        (("proto", "proto"), ("ct", "ct")),
        (("src", "src"),),
        (("dst", "dst"),),
        (("iif", "in"), ("oif", "out")),
        (("mark", "mark"), ("connmark", "ctmark")),
        (("route", "route"),),
    )

    def show(self, pos: Position, prev: PacketState | None, total: int) -> None:
        st = pos.state
        self.border_title = f"packet at {pos.index}/{total}"
        out: list[Content | tuple[str, str] | str] = []
        for line in self.LAYOUT:
            for k, (name, label) in enumerate(line):
                value = st.value(name)
                if k:
                    out.append("  ")
                if name in pos.changed:
                    out.append((f"{label} ", "bold $warning"))
                    out.append((value, "bold reverse $warning"))
                else:
                    out.append((f"{label} ", "$foreground 60%"))
                    out.append(value)
            out.append("\n")
        if prev is not None:
            for name in ("src", "dst", "mark", "connmark", "iif", "oif"):
                if name in pos.changed:
                    out.append((f"  was {name} {prev.value(name)}\n", "$warning"))
        if pos.pending_nat:
            out.append((f"nat \u21e2 {pos.pending_nat.split(' -> ')[-1]}", "bold $warning"))
            out.append((" when the nat table ends\n", "$foreground 60%"))
        out.append((f"orig {st.original}", "$foreground 60%"))
        _update(self, Content.assemble(*out))


def _update(widget: Static, content: Content) -> None:
    """Static.update, with a layout pass only when the content's line count changes (a layout costs a frame)."""
    width = widget.content_region.width
    lines = content.get_height(cast(RulesMap, widget.styles), width) if width > 0 else -1
    old = getattr(widget, "_nft_lines", None)
    widget._nft_lines = lines  # type: ignore[attr-defined]
    widget.update(content, layout=old != lines)
