"""mac_minimal: a Titans Memory-As-Context transformer, built one concept per module.

Each module backs one chapter of the book in ``book/``:

=====  =======================  ==================================================
 ch.    module                   concept
=====  =======================  ==================================================
 1      ``memory_state``         a memory = state + write rule + read rule
 2      ``recurrence``           the MM-Rec block, one step at a time
 3      ``scan``                 linear recurrences as an associative scan, readably
 3      ``scan_kernel``          the same scan tuned: in place, Blelloch, a scan for backward
 3      ``hybrid``               MM-Rec with everything scannable taken out of the loop
 4      ``fast_weights``         the memory's MLP, its loss and gradients, as functions
 4      ``neural_memory``        an MLP written by gradient descent at test time
 4      ``dual_form``            the same write-and-read without per-token weights
 5      ``rotary``               rotary position embedding
 5      ``attention``            heads, masked attention, the weights written out (chapters 5-8)
 5      ``persistent``           learned persistent keys/values (attention sinks)
 6      ``mac_attention``        Titans eqs. 21-25 for one segment, causally
 7      ``segmentation``         splitting a sequence into segments
 7      ``model``                the MACTransformer, streaming generation
 8      ``baseline``             a full-attention transformer, the O(n^2) reference
 8      ``data``                 long-range recall and standard-library text
 8      ``train``                the loop (command line: ``python -m mac_minimal``)
 8      ``train_config``         a run's config; three models at one budget
 8      ``task_data``            a run's batches: recall or text
 8      ``evaluation``           the loss; recall by distance, bits per byte
 8      ``checkpoint``           exact resume: RNG states, atomic writes
 8      ``runtime``              devices, DDP processes, autocast, memory
 8      ``metrics``              the run's record: JSON lines
 8      ``cli``                  flags, one-line errors, exit statuses
 8      ``inspect_memory``       inside a trained MAC: the memory's rates, the answer's attention
 9      ``sliding_window``       sliding-window attention over a stream (MAG, MAL)
 9      ``mag``                  Titans eqs. 26-28: memory as a gate; reading before writing
 9      ``mal``                  Titans eqs. 29-31: memory as a layer
 9      ``layer_stack``          the language-model frame of MAG and MAL
 -      ``notebook``             ``setup_notebook()``: determinism for nbval
 -      ``diagrams``             pictures of the machine, drawn from code (chapters 1, 2, 4-9)
 -      ``plots``                one log-log helper for the benchmark figures (chapters 3, 4, 7)
 -      ``layers``               the feed-forward block and the one parameter count
 -      ``checks``               the shared input checks (sizes, rotary heads, token ids)
=====  =======================  ==================================================

Nothing runs at import time.
"""
