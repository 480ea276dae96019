//! formats tests.
