//! Managed worker pool (issue 5).
