"""posttrain: the library the pipeline's stage scripts share.

Modules stay light to import (no torch at import time) so that `load_params()` can
fail fast; heavy libraries are imported inside the functions that need them.
"""
