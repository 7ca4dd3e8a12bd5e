"""jitrender's Nuke GUI file: nothing to add to menus; ``init.py`` already registered the filter.

Present so a studio can put ``hooks/nuke`` on ``NUKE_PATH`` next to its own plugins and see
that the filter is active in the Script Editor (``jitrender_nuke.resolver().active``).
"""

import jitrender_nuke  # noqa: F401
