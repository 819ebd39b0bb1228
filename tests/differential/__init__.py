"""The differential suite: every operator and procedure against PyTorch (see test_differential.py)."""
