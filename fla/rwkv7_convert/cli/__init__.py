"""The command line: one module per command (convert, export, verify, inspect), the flags they share (flags), the
process plumbing (process: one-line errors, exit statuses, interrupts) and the dispatcher (dispatch: COMMANDS,
run_command, main). Nothing in the library imports it; the callers are __main__.py, rwkv7_convert_entry.py (the
console scripts) and utils/*.py, each naming the module it calls."""
