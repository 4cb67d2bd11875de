"""Chat: the prompt side (`template`: the chat template, `messages`: OpenAI-style input converted to what the
template reads) and the output side (`tool_calls`: the parser interface, `function_call`: MiniMax-Text-01's
native `<function_call>` format, `tool_parsers`: the parser of each model family)."""
