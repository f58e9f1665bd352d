"""The trace debugger: a textual app that steps through a trace like a debugger.

It presents a trace document (Contract 1).  It computes nothing about
netfilter: tracing is done by the `tracer` it is given (the engine, in
`nftrace tui`); the app only re-asks it when the packet is edited.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from nftrace.errors import NftraceError
from nftrace.ruleset.model import BUILTIN_CHAINS, Chain, Ruleset
from nftrace.tui.model import BranchModel, TraceModel, describe, flow_string
from nftrace.tui.widgets import ChainRows, HookPath, PacketPanel, RulesView

Tracer = Callable[[dict[str, Any]], dict[str, Any]]

#: packet keys a flow string cannot carry: kept from the packet being edited
_EXTRA_KEYS = ("uid", "gid", "length", "ttl", "ct_mark")

HELP = """\
[b]nftrace tui[/b]: step through a packet's trace like a debugger

[b]s[/b]        step: the next step (into jumps)
[b]n[/b]        next: the next step in this chain (over jumps)
[b]f[/b]        finish: run until this chain is left
[b]b[/b]        back: one step backwards
[b]c[/b]        continue: run to the next breakpoint (or the end)
[b]x[/b]        toggle a breakpoint on the rule under the cursor
         (on the chain's first row: on entering the chain)
[b]tab[/b]      pick the next branch (shift+tab: the previous one)
[b]/[/b]        search rules (enter: next match, esc: close)
[b]r[/b]        the raw iptables-save line of the rule under the cursor
[b]e[/b]        edit the packet and trace it again
[b]?[/b]        this help            [b]q[/b]  quit

[b]up/down pgup/pgdn home/end[/b] move the cursor; [b]left/right[/b] scroll long rules;
[b]enter[/b] or a click on the cursor row: go to the step that evaluated that rule.
Click a hook of the path or a branch to go there.

Rows: [b]\u2713[/b] matched (verdict), [b]\u2717[/b] did not match (why: below the table),
[b].[/b] evaluated later in this pass, dim: not evaluated in this pass.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,enter", "close", "close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; max-width: 90%; height: auto; max-height: 90%;
                          border: round $accent; padding: 0 1; background: $panel; }
    """

    def __init__(self, warnings: list[str] | None = None) -> None:
        super().__init__()
        self.warnings = warnings or []

    def compose(self) -> ComposeResult:
        body = Content.from_markup(HELP)
        if self.warnings:
            body = Content.assemble(body, ("\nWarnings of this trace:\n", "bold $warning"))
            for w in self.warnings:
                body = Content.assemble(body, ("- " + w + "\n", "$warning"))
        yield Static(body, id="help")

    def action_close(self) -> None:
        self.dismiss(None)


class RawRuleScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,r,enter", "close", "close")]
    DEFAULT_CSS = """
    RawRuleScreen { align: center middle; }
    RawRuleScreen > Static { width: 90%; height: auto; max-height: 90%;
                             border: round $accent; padding: 0 1; background: $panel; }
    """

    def __init__(self, body: Content) -> None:
        super().__init__()
        self.body = body

    def compose(self) -> ComposeResult:
        yield Static(self.body, id="raw")

    def action_close(self) -> None:
        self.dismiss(None)


class EditScreen(ModalScreen[dict[str, Any] | None]):
    """Edit the packet as a flow string; the trace is redone on enter."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    EditScreen { align: center middle; }
    EditScreen > Vertical { width: 90%; height: auto; border: round $accent; padding: 0 1; background: $panel; }
    EditScreen #edit-error { color: $error; height: auto; }
    EditScreen #edit-help { color: $foreground 60%; height: auto; }
    """

    def __init__(self, flow: str, retrace: Callable[[str], dict[str, Any]]) -> None:
        super().__init__()
        self.flow = flow
        self.retrace = retrace

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]packet[/b] (enter: trace again, esc: cancel)")
            yield Input(self.flow, id="edit-flow")
            yield Static("", id="edit-error")
            yield Static(
                "PROTO SRC[:SPORT] > DST[:DPORT] [iif IF | local] [oif IF] [mark M] [state S] "
                "[type ICMPTYPE] [flags SYN,ACK]   (SRC '-': none, for a local packet)",
                id="edit-help",
                markup=False,
            )

    @on(Input.Submitted, "#edit-flow")
    def submit(self, event: Input.Submitted) -> None:
        try:
            doc = self.retrace(event.value)
        except NftraceError as e:
            self.query_one("#edit-error", Static).update(Content(e.one_line().removeprefix("nftrace: ")))
            return
        except Exception as e:  # a bug in the engine: say so, keep the debugger alive
            self.query_one("#edit-error", Static).update(Content(f"internal error (a bug): {type(e).__name__}: {e}"))
            return
        self.dismiss(doc)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DebuggerScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "step", "step"),
        Binding("n", "next", "next"),
        Binding("f", "finish", "finish"),
        Binding("b", "back", "back"),
        Binding("c", "cont", "cont"),
        Binding("x", "toggle_break", "break"),
        Binding("tab", "branch(1)", "branch", priority=True),
        Binding("shift+tab", "branch(-1)", "branch", show=False, priority=True),
        Binding("slash", "search", "search"),
        Binding("r", "raw", "raw"),
        Binding("e", "edit", "edit"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
        Binding("escape", "close_search", "close search", show=False),
    ]
    DEFAULT_CSS = """
    DebuggerScreen { layout: vertical; }
    #title { height: 1; background: $primary 30%; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #body { height: 1fr; }
    #left { width: 1fr; }
    #chain-title { height: 1; background: $boost; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #rules { height: 1fr; scrollbar-size-horizontal: 0; }
    #detail { height: 3; padding: 0 1; background: $boost; }
    DebuggerScreen.-wide #detail { height: 5; }
    #side { width: 32; }
    DebuggerScreen.-wide #side { width: 46; }
    #branches { height: 1fr; border: round $secondary; border-title-color: $secondary; }
    #stepbar { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    #search { display: none; height: 3; }
    #search.-open { display: block; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.model: TraceModel
        self.bi = 0  # branch index
        self.pos = 0
        self.bp_rules: set[tuple[str, str, int]] = set()
        self.bp_chains: set[tuple[str, str]] = set()
        self.browse: tuple[str, str] | None = None  # a chain shown by search, not the step's own
        self.message = ""
        self.query_text = ""
        self._rows_cache: dict[tuple[int, str, str, int | None], ChainRows] = {}

    @property
    def tui(self) -> TraceApp:
        app = self.app
        assert isinstance(app, TraceApp)
        return app

    @property
    def branch(self) -> BranchModel:
        return self.model.branches[self.bi]

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static(id="title", markup=False)
        yield HookPath(id="path")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Static(id="chain-title", markup=False)
                yield RulesView(id="rules")
                yield Static(id="detail", markup=False)
            with Vertical(id="side"):
                yield PacketPanel(id="packet")
                yield OptionList(id="branches")
        yield Static(id="stepbar", markup=False)
        yield Input(id="search", placeholder="search rules: enter = next match, esc = close")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.load(self.tui.doc)
        self.query_one(RulesView).focus()

    def on_unmount(self) -> None:
        gc.unfreeze()

    def load(self, doc: dict[str, Any]) -> None:
        self.model = TraceModel(doc)
        # A 100k-rule trace is ~10^6 objects that live as long as the screen: keep them out of the
        # cyclic collector, whose full passes over them would otherwise stall a key press now and then.
        gc.freeze()
        self.bi = 0
        self.pos = 0
        self.browse = None
        self._rows_cache.clear()
        ol = self.query_one("#branches", OptionList)
        ol.clear_options()
        n = len(self.model.branches)
        services = {b.branch.get("service") for b in self.model.branches}
        one = len(services) == 1 and None not in services
        ol.border_title = f"branches ({n})" + (f" {services.pop()}" if one else "")
        for b in self.model.branches:
            p = b.probability
            ptxt = "p=?" if p is None else f"p={p:.4g}"
            prompt = Content.assemble((f"{b.index + 1} {ptxt} ", "bold"), b.label(service=not one))
            for c in b.conditions:
                prompt = Content.assemble(prompt, ("\n  if " + c, "$foreground 60%"))
            ol.add_option(Option(prompt, id=f"branch-{b.index}"))
        ol.highlighted = 0
        self.refresh_view()

    # ------------------------------------------------------------------ state -> widgets
    def chain(self, table: str, name: str) -> Chain | None:
        return self.tui.ruleset.chain(table, name)

    def _rows(self, table: str, name: str, visit_id: int | None) -> ChainRows | None:
        key = (self.bi, table, name, visit_id)
        rows = self._rows_cache.get(key)
        if rows is None:
            visit = self.branch.visits[visit_id] if visit_id is not None else None
            chain = self.chain(table, name)
            if chain is None:
                # a chain the trace walks but the dump does not declare (an implicit built-in chain)
                tail = self.branch.positions[visit.tail].step if visit is not None and visit.tail else None
                policy = tail.get("verdict") if tail and tail.get("kind") == "policy" else None
                chain = Chain(name=name, policy=policy or ("ACCEPT" if name in BUILTIN_CHAINS.get(table, ()) else None))
            rows = ChainRows(table, chain, visit, self.branch)
            self._rows_cache[key] = rows
        return rows

    def shown_rows(self) -> ChainRows | None:
        """The chain the rules view shows now (with its visit), set at this position."""
        b = self.branch
        pos = b.positions[self.pos]
        if self.browse is not None:
            table, name = self.browse
            rows = self._rows(table, name, b.visit_of_chain(table, name, self.pos))
        elif pos.view is not None:
            v = b.visits[pos.view]
            rows = self._rows(v.table, v.chain, v.id)
        else:
            rows = None
        if rows is not None:
            rows.position = self.pos
        return rows

    def refresh_view(self, follow: bool = True) -> None:
        b = self.branch
        pos = b.positions[self.pos]
        n = len(self.model.branches)
        p = b.probability
        flow = flow_string({**self.model.packet, "origin": self.model.origin}, brief=True)
        nw = len(self.model.warnings)
        warn = f"  \u26a0 {nw} warning{'s' if nw > 1 else ''} (?)" if nw else ""
        self.query_one("#title", Static).update(
            layout=False, content=f"branch {self.bi + 1}/{n} {'p=?' if p is None else f'p={p:.4g}'}{warn}   {flow}"
        )
        self.query_one(HookPath).show(b, self.pos)
        prev = b.positions[self.pos - 1].state if self.pos > 0 else None
        self.query_one(PacketPanel).show(pos, prev, b.end)
        view = self.query_one(RulesView)
        rows = self.shown_rows()
        title = self.query_one("#chain-title", Static)
        if rows is None:
            view.clear()
            title.update("(no chain: this branch never reaches a table)", layout=False)
        else:
            current = None if self.browse is not None else rows.row_of(pos)
            view.bp_rows = {r for (t, c, r) in self.bp_rules if (t, c) == (rows.table, rows.name)}
            view.bp_chain = (rows.table, rows.name) in self.bp_chains
            view.search_text = self.query_text.lower()
            view.show(rows, current, follow=follow)
            hook = rows.visit.hook if rows.visit is not None else "-"
            extra = "  (browsing: s/n/f/b/c return to the trace)" if self.browse is not None else ""
            title.update(f"{rows.table} {rows.name}  [{hook}]  {len(rows.chain.rules)} rules{extra}", layout=False)
        self.update_detail()
        msg = f"   {self.message}" if self.message else ""
        self.query_one("#stepbar", Static).update(f"{self.pos}/{b.end} {describe(pos, b)}{msg}", layout=False)

    def update_detail(self) -> None:
        view = self.query_one(RulesView)
        info = view.info()
        detail = self.query_one("#detail", Static)
        if info is None:
            detail.update("", layout=False)
            return
        head = f"#{info.row} {info.text}" if info.kind == "rule" else info.text
        state = {"match": "\u2713 ", "miss": "\u2717 ", "pending": ". ", "dim": "- "}.get(info.state, "")
        why = (state + info.why, _STATE_STYLE.get(info.state, "")) if info.why else ""
        detail.update(Content.assemble(why, "\n" if info.why else "", head), layout=False)

    # ------------------------------------------------------------------ moving
    def goto(self, pos: int, message: str = "") -> None:
        self.pos = max(0, min(pos, self.branch.end))
        self.browse = None
        self.message = message
        self.refresh_view()

    def action_step(self) -> None:
        if self.pos >= self.branch.end:
            self.goto(self.pos, "at the end of the trace (b: back)")
        else:
            self.goto(self.pos + 1)

    def action_next(self) -> None:
        self.goto(self.branch.step_over(self.pos))

    def action_finish(self) -> None:
        self.goto(self.branch.finish(self.pos))

    def action_back(self) -> None:
        if self.pos == 0:
            self.goto(0, "at the start of the trace")
        else:
            self.goto(self.pos - 1)

    def action_cont(self) -> None:
        j = self.branch.find_break(self.pos, self.bp_rules, self.bp_chains)
        if j is None:
            self.goto(self.branch.end, "no breakpoint hit: ran to the end")
            return
        v = self.branch.visits[self.branch.positions[j].visit or 0]
        step = self.branch.positions[j].step or {}
        if self.branch.positions[j].kind == "rule" and (v.table, v.chain, step.get("rule")) in self.bp_rules:
            self.goto(j, f"breakpoint: {v.table} {v.chain} #{step.get('rule')}")
        else:
            self.goto(j, f"breakpoint: entering {v.table} {v.chain}")

    def action_goto_segment(self, i: int) -> None:
        segs = self.branch.segments
        if 0 <= i < len(segs):
            self.goto(segs[i].first)

    def action_branch(self, delta: int) -> None:
        n = len(self.model.branches)
        if n == 1:
            self.message = "only one branch"
            self.refresh_view(follow=False)
            return
        self.switch_branch((self.bi + delta) % n)

    def switch_branch(self, j: int) -> None:
        if j == self.bi:
            return
        old, new = self.branch, self.model.branches[j]
        k = old.common_prefix(new)
        pos = self.pos if self.pos <= k else min(k + 1, new.end)
        self.bi = j
        self.query_one("#branches", OptionList).highlighted = j
        p = new.probability
        why = f"; differs from step {k + 1}" if self.pos > k else ""
        self.goto(pos, f"branch {j + 1}: {'p=?' if p is None else f'p={p:.4g}'} {new.label()}{why}")

    @on(OptionList.OptionSelected, "#branches")
    def branch_clicked(self, event: OptionList.OptionSelected) -> None:
        self.switch_branch(event.option_index)

    # ------------------------------------------------------------------ rules view events
    @on(RulesView.CursorMoved)
    def cursor_moved(self, event: RulesView.CursorMoved) -> None:
        self.update_detail()

    @on(RulesView.Activated)
    def row_activated(self, event: RulesView.Activated) -> None:
        rows = self.query_one(RulesView).rows
        if rows is None:
            return
        info = rows.info(event.row)
        if info.kind == "rule":
            j = self.branch.first_eval(rows.table, rows.name, event.row, self.pos)
        else:
            j = info.position
        if j is None:
            self.message = f"{rows.table} {rows.name} #{event.row} is not evaluated in this branch"
            self.refresh_view(follow=False)
        else:
            self.goto(j)

    # ------------------------------------------------------------------ breakpoints
    def action_toggle_break(self) -> None:
        view = self.query_one(RulesView)
        rows = view.rows
        if rows is None:
            return
        info = rows.info(view.cursor)
        if info.kind == "rule":
            key = (rows.table, rows.name, info.row)
            what = f"{rows.table} {rows.name} #{info.row}"
            on_ = key not in self.bp_rules
            (self.bp_rules.add if on_ else self.bp_rules.discard)(key)
        else:
            ckey = (rows.table, rows.name)
            what = f"entering {rows.table} {rows.name}"
            on_ = ckey not in self.bp_chains
            (self.bp_chains.add if on_ else self.bp_chains.discard)(ckey)
        self.message = f"breakpoint {'set' if on_ else 'cleared'}: {what}"
        self.refresh_view(follow=False)

    # ------------------------------------------------------------------ search
    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.add_class("-open")
        box.value = self.query_text
        box.focus()

    def action_close_search(self) -> None:
        box = self.query_one("#search", Input)
        if box.has_class("-open"):
            box.remove_class("-open")
            self.query_one(RulesView).focus()

    @on(Input.Submitted, "#search")
    def search_submitted(self, event: Input.Submitted) -> None:
        self.action_close_search()
        self.search(event.value)

    def search(self, text: str) -> None:
        """Move the cursor to the next rule containing `text` (case-insensitive): this chain first, then others."""
        self.query_text = text.strip()
        q = self.query_text.lower()
        view = self.query_one(RulesView)
        rows = view.rows
        if not q or rows is None:
            self.message = ""
            self.refresh_view(follow=False)
            return
        rules = rows.chain.rules
        hits = [i for i, r in enumerate(rules, 1) if q in r.text.lower()]
        if hits:
            after = [i for i in hits if i > view.cursor]
            row = after[0] if after else hits[0]
            k = hits.index(row) + 1
            self.message = f"/{self.query_text}: match {k}/{len(hits)} in {rows.table} {rows.name}"
            self.refresh_view(follow=False)
            view.set_cursor(row, center=True)
            self._reveal(view, row, q)
            self.update_detail()
            return
        # other chains: the same table first, then the others
        order = [rows.table] + [t for t in self.tui.ruleset.tables if t != rows.table]
        for tname in order:
            table = self.tui.ruleset.tables[tname]
            for cname, chain in table.chains.items():
                if chain is rows.chain:
                    continue
                for i, r in enumerate(chain.rules, 1):
                    if q in r.text.lower():
                        self.browse = (tname, cname)
                        self.message = f"/{self.query_text}: found in {tname} {cname} #{i}"
                        self.refresh_view(follow=False)
                        view.set_cursor(i, center=True)
                        self._reveal(view, i, q)
                        self.update_detail()
                        return
        self.message = f"/{self.query_text}: no rule contains it"
        self.refresh_view(follow=False)

    @staticmethod
    def _reveal(view: RulesView, row: int, q: str) -> None:
        if view.rows is None:
            return
        at = view.rows.text(row).lower().find(q)
        if at >= 0:
            view.reveal(at, at + len(q))

    # ------------------------------------------------------------------ modals
    def action_raw(self) -> None:
        view = self.query_one(RulesView)
        rows = view.rows
        info = view.info()
        if rows is None or info is None or info.kind != "rule":
            self.message = "r: put the cursor on a rule first"
            self.refresh_view(follow=False)
            return
        rule = rows.chain.rules[info.row - 1]
        src = self.tui.ruleset.source
        body = Content.assemble(
            (f"{src}:{rule.line}", "bold $accent"),
            f"   ({rows.table} {rows.name} rule {info.row}; iptables -t {rows.table} -L {rows.name} --line-numbers)\n\n",
            (rule.text, "bold"),
            "\n\n",
            (info.status + "  " + info.why if info.status else info.why, _STATE_STYLE.get(info.state, "")),
            ("\n\n(esc / r: close)", "$foreground 60%"),
        )
        self.app.push_screen(RawRuleScreen(body))

    def action_edit(self) -> None:
        flow = flow_string(self.tui.packet)
        self.app.push_screen(EditScreen(flow, self.tui.retrace), self._edited)

    def _edited(self, doc: dict[str, Any] | None) -> None:
        if doc is None:
            return
        self.load(doc)
        self.message = "traced again"
        self.refresh_view()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.model.warnings))

    async def action_quit(self) -> None:
        self.app.exit()


_STATE_STYLE = {"match": "$success", "miss": "$error", "pending": "", "dim": "$foreground 60%"}


class TraceApp(App[None]):
    """`nftrace tui`: ruleset (for the rules of each chain), tracer (packet dict -> trace JSON), packet dict."""

    TITLE = "nftrace"
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self,
        ruleset: Ruleset,
        tracer: Tracer,
        packet: dict[str, Any],
        doc: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.ruleset = ruleset
        self.tracer = tracer
        self.packet = dict(packet)
        self.doc = doc if doc is not None else tracer(self.packet)

    def get_default_screen(self) -> Screen[Any]:
        return DebuggerScreen()

    @property
    def debugger(self) -> DebuggerScreen:
        for s in self.screen_stack:
            if isinstance(s, DebuggerScreen):
                return s
        raise LookupError("no debugger screen")

    def retrace(self, flow: str) -> dict[str, Any]:
        """Trace the packet of a flow string; keeps what a flow string cannot say (uid, ttl...)."""
        from nftrace.engine.packet import parse_flow

        text = flow.strip()
        parts = text.split(None, 2)
        no_src = len(parts) >= 2 and parts[1].split(":")[0] in ("-", "*")
        if no_src:
            sport = parts[1].partition(":")[2]
            text = f"{parts[0]} 0.0.0.0{':' + sport if sport else ''} {parts[2] if len(parts) > 2 else ''}"
        d = parse_flow(text)
        if no_src:
            d["src"] = None
        for k in _EXTRA_KEYS:
            if self.packet.get(k) is not None and k not in d:
                d[k] = self.packet[k]
        doc = self.tracer(d)
        self.packet = d
        self.doc = doc
        return doc
