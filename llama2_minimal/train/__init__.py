"""Training: one small loop (loop.py) shared by every stage, then one module per stage of the recipe."""
