//! PIM ISA and bank simulator (layer 3): HBM3 organisation and timing as data,
//! an instruction set with a binary encoding and an assembly text format, and a
//! functional and cycle-accurate simulator that reports cycles, bytes moved and
//! energy.
//!
//! The simulator executes programs; it knows nothing of product quantization or
//! language models, and it depends on no other workspace crate.
