"""Network building blocks shared by the methods (backbones, heads, attention pooling, distributed helpers)."""
