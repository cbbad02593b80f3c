"""The iLLaDA demo model: its offline data (`illada.demo.data`), tokenizer (`illada.demo.tokenizer`), build recipe
(`illada.demo.build_demo_model`), evaluation and the command-line demo (`illada.demo.cli`, run by demo.py)."""
