//! The `jetlock` command.
