"""Models by source: the one loader (:mod:`.load`: Hub ids, folders, single files, named models), unlearned
weights (:mod:`.weights`), the Hub (:mod:`.hub`), pipeline assembly (:mod:`.assembly`), the tiny random models
(:mod:`.tiny`) and the named-model registry (:mod:`.named`; the lab model lives in :mod:`amsmooth.lab.model`).

Nothing is imported here: ``amsmooth --help`` reads :mod:`.hub` without torch.
"""
