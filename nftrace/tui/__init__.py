"""`nftrace tui`: a textual debugger for traces.

`nftrace.tui.model` reads a trace document into debugger positions (no
textual); `nftrace.tui.widgets` and `nftrace.tui.app` import textual and are
loaded only by the `tui` command.
"""
