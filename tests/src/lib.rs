//! Cross-crate, CLI and interop tests live in tests/.
