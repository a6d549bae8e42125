"""The CLI's commands, one plain function per module (cli.py registers them), and their building blocks:
options (every option, defined once), boundary (typed errors -> one red line and an exit code), output
(table / --json / --paths / --preview), queryargs (photo or text?), batch (query --batch), open_index."""
