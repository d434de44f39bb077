"""A fake kube-apiserver (list/watch over HTTPS) and object builders for tests and benchmarks."""
