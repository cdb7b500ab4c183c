"""mac_minimal: a Titans Memory-As-Context transformer, built one concept per module.

Each module backs one chapter of the book in ``book/``:

=====  =======================  ==========================================
 ch.    module                   concept
=====  =======================  ==========================================
 1      ``memory_state``         a memory = state + write rule + read rule
 2      ``recurrence``           the MM-Rec block, one step at a time
 3      ``scan``                 linear recurrences as an associative scan
=====  =======================  ==========================================

Nothing runs at import time.
"""
