"""jitrender's Nuke start-up file: put ``hooks/nuke`` on ``NUKE_PATH``.

Runs in every Nuke session, GUI or ``nuke -x`` / ``-t``: registers the filename filter that
fetches files through the jitrender agent. Inert when no agent runs (``JITRENDER_SOCKET``
unset or unreachable).
"""

import jitrender_nuke

jitrender_nuke.install()
