//! history tests.
