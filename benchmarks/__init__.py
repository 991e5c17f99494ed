"""gradjit benchmarks: `python benchmarks/run.py [--quick] [--only W1,W3a,...]`."""
