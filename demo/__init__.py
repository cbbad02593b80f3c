"""The iLLaDA demo model: its offline data (`demo.data`), tokenizer (`demo.tokenizer`) and build recipe."""
