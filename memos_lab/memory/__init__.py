"""The three kinds of memory a MemCube holds: textual (declarative), activation and parametric."""
