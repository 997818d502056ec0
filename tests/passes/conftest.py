import sys
from pathlib import Path

# The hand-built graphs in graphs.py are shared by this folder's tests (importlib mode does
# not put test folders on sys.path by itself).
sys.path.insert(0, str(Path(__file__).parent))
