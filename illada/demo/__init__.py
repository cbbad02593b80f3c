"""The iLLaDA demo model: its offline data (`illada.demo.data`), tokenizer (`illada.demo.tokenizer`) and build recipe."""
