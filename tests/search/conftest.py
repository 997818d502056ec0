import sys
from pathlib import Path

# user_metrics.py is imported by name (as a user's --metric module:function would be).
sys.path.insert(0, str(Path(__file__).parent))
