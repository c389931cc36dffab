"""SimPy cost model of LLaMA training. Imports no torch: it starts fast and runs where torch is absent."""
