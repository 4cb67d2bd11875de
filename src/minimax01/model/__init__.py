"""nn.Modules of MiniMax-Text-01, one concept per file. Parameter names = the original checkpoint names."""
