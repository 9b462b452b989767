"""MaxEnt tree search over tokens (Diffusion Tree Sampling), its rewards, and walking a finished
tree (explore). May import engine.lm and the shared plumbing; never engine.advtok or engine.bench."""
