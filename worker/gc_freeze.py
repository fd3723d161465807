"""Imported last by the fork server: moves every object it holds out of the garbage collector's reach.

A forked trial process shares the server's memory copy-on-write; a collection in the child
would touch (and so copy) every page holding a tracked object: torch and Lightning's
hundreds of MB. ``gc.freeze`` (as Instagram does for its pre-fork servers) leaves them shared.
"""

import gc

gc.collect()
gc.freeze()
