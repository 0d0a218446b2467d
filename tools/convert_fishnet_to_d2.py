#!/usr/bin/env python
"""Convert an official FishNet checkpoint to Detectron2's MODEL.WEIGHTS format.

    python tools/convert_fishnet_to_d2.py INPUT OUTPUT

See fishnet_d2/convert.py for what is checked and written.
"""
import sys

from fishnet_d2.convert import main

if __name__ == "__main__":
    sys.exit(main())
