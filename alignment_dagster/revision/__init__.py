"""Constitutional AI phase 1: critique -> revision chains, the gate each revision must pass, and the rows
they leave for supervised fine-tuning. Plain functions; the `revisions` and `sft_dataset` assets wire them."""
