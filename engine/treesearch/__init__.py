"""MaxEnt tree search over tokens (Diffusion Tree Sampling) and its rewards. May import engine.lm
and the shared plumbing; never engine.advtok or engine.bench."""
