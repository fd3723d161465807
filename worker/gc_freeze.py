"""Imported last by the fork server: moves every object it holds out of the garbage collector's reach.

A forked trial process shares the server's memory copy-on-write; a collection in the child
would touch (and so copy) every page holding a tracked object: torch and Lightning's
hundreds of MB. ``gc.freeze`` (as Instagram does for its pre-fork servers) leaves them shared.

It also makes the fork server a child subreaper: what a trial process that died leaves running
(a double fork, a ``setsid``) comes to the fork server, not to init, where the agent finds and
kills it; the fork server reaps it, without the warning it gives for a pid it did not fork.
"""

import gc
import warnings

from retia.worker.runner import become_subreaper

become_subreaper()
warnings.filterwarnings("ignore", message="forkserver: waitpid returned unexpected pid")
gc.collect()
gc.freeze()
