//! The PocketVLM desktop app as a library, so that its tests drive the same code the binary
//! runs. The command-line tools live in the binary (`main.rs`, `cli/`).

pub mod gui;
