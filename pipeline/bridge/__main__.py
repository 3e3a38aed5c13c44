"""`python3 -m <package>`: run the bridge (see main.py)."""

from .main import main

main()
