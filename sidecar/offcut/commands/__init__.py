"""One module per ``offcut`` command (``cli.py`` parses; these do the work)."""
