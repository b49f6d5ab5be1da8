"""The liquid-control command line."""
