"""Benchmarks: a kube-proxy dump generator (gen_kube) and the scale benchmark (bench)."""
