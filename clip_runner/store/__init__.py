"""The BentoML model store: entries read without torch (:mod:`.entries`), written from torch models
(:mod:`.weights`), added from the hub or a file (:mod:`.registration`, :mod:`.download`), and the
entry the settings select (:mod:`.selection`)."""
