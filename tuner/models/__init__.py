"""Model shapes and presets, weight types (float and quantized linears), the decoder, checkpoint loading and
dummy weights."""
