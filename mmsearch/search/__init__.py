"""Search: SearchEngine over one index snapshot, pure ranking functions."""
