import subprocess
import sys


def test_importing_the_nbits_quantizer_leaves_the_root_logger_as_it_was() -> None:
    # In a fresh interpreter: the module's logging.basicConfig runs on its first import only.
    code = (
        "import logging\n"
        "from inferopt.ortquant import nbits_quantizer\n"
        "mq = nbits_quantizer()\n"
        "assert hasattr(mq, 'MatMulNBitsQuantizer')\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", str(30)]  # no handler added, still WARNING
