"""``mmlwf <command>``'s parsers and handlers, by command group: :mod:`.data` (convert,
label, validate, split, stats, info, bench) and :mod:`.runs` (train, export, md, evaluate,
compare, plot, report). Each handler parses argv into one call of :mod:`mmlwf.steps` (or of
the library, for commands without a rule); :mod:`mmlwf.cli` assembles them."""
