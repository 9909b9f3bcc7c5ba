"""bfn_platform."""
