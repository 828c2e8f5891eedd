"""The model server: protocols (:mod:`.protocol`), models (:mod:`.model`), transports (:mod:`.transport`)."""
