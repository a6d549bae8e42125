"""Models: config -> (model, preprocess, tokenizer) factory, the dual encoder, its towers and fusion, device/precision."""
