"""The stability ablation: the README's main job with one lever (or a combination) changed per row."""
