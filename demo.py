"""Ask the small demo model shipped in `illada-demo/` a few questions and watch it denoise: `python demo.py --help`.

The demo itself is `illada/demo/cli.py`.
"""

from illada.demo.cli import main

if __name__ == "__main__":
    main()
