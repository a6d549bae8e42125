"""The CLI's building blocks below cli.py: query-term parsing, output modes, commands over an index."""
