"""Exercise stubs, one module per concept. Each function raises NotImplementedError until you write it.

Grade your work with `llama-course grade` (or `pytest tests/exercises --impl labs`).
"""
