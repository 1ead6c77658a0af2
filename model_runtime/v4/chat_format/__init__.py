"""DeepSeek-V4 prompt encoding: the tokenizer, the chat-format renderer and the DSML output parser."""
