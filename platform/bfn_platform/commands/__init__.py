"""Command groups of the bfn command line."""
