"""The embedded benchmarks the project generates itself: shapes (the default), an
LVIS-shaped variant and an Open Images-format set; generated once, cached by their spec."""
