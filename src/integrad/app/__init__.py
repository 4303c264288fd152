"""The application around the library: the command line (:mod:`.cli`), the demo (:mod:`.demo`), input files
(:mod:`.io`), whole-data-set jobs (:mod:`.jobs`) and atomic files (:mod:`.files`)."""
